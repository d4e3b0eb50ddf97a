"""Build a scoring image without a Docker daemon: base image + dependency layer + app layer + one layer per model,
pushed through the registry's HTTP API. Reproducible: the digest depends only on the inputs' content."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlinfra_scoring
from mlinfra.engine import cache_dir
from mlinfra.errors import ImageBuildError
from mlinfra.files import sha256_file, write_atomic
from mlinfra.images import grpcfront
from mlinfra.images.layers import Entry, Layer, build_layer, layer_from_dir
from mlinfra.images.oci import (
    ACCEPT,
    CONFIG_V1,
    LAYER_GZIP,
    MANIFEST_V2,
    OciRegistryError,
    RegistryClient,
    image_config,
    registry_url,
)
from mlinfra.registry import ModelRegistry

# What the scoring server needs inside the image (kept equal to pyproject's pins; a unit test checks).
SERVER_REQUIREMENTS = [
    "aiohttp==3.14.5",
    "numpy==2.4.6",
    "onnxruntime==1.32.0",
    "orjson==3.13.0",
    "pysimdjson==7.0.2",  # large JSON bodies' tensor data parsed in C (mlinfra_scoring.jsonbody)
    "uvloop==0.23.0",
    "httptools==0.9.0",  # whole inference requests parsed on the direct path (mlinfra_scoring.direct)
    # The Open Inference Protocol over gRPC (mlinfra_scoring.grpc_server); protobuf ≥ what oip_pb2.py was made with.
    "grpcio==1.85.3",
    "protobuf==6.33.6",
    # /metrics (prometheus-client) and OTLP export of metrics and request traces (the OpenTelemetry SDK).
    "prometheus-client==0.26.0",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    # Signature bundles checked at model load (mlinfra_scoring.provenance, MLINFRA_SERVE_TRUST).
    "cryptography==50.0.2",
]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
FORMAT = "mlinfra-image-1"  # bump when the layout changes: every digest changes with it
# Layer caches are keyed by the inputs and by the code that builds layers, so a code change never serves a stale one.
_CODE = hashlib.sha256(
    Path(__file__).read_bytes() + (Path(__file__).parent / "layers.py").read_bytes()
).hexdigest()[:12]
PORT = 8080
GRPC_PORT = 8081
"""The Open Inference Protocol's gRPC service in every image (MLINFRA_SERVE_GRPC_PORT), beside REST on PORT."""
SITE = "/opt/mlinfra/site-packages"
APP = "/opt/mlinfra/app"
USER_DIR = "/opt/mlinfra/user"
TRUST = "/opt/mlinfra/trust"
"""Trusted keys and the models' signature bundles (mlinfra_scoring.provenance), when ScoringImage has trusted keys."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelInput:
    name: str
    version: int
    sha256: str
    registry: str
    credential: str | None = None


def model_inputs(refs: list[dict[str, Any]]) -> list[ModelInput]:
    """ModelInputs from model refs (RegisteredModel.model_ref / a resolved "name:version": name, version, sha256,
    registry, credential)."""
    return [
        ModelInput(r["name"], int(r["version"]), r["sha256"], r["registry"], r.get("credential") or None)
        for r in refs
    ]


@dataclass
class ImageSpec:
    repository: str  # host[:port]/path, e.g. 127.0.0.1:5000/mlinfra/churn
    models: list[ModelInput]
    base: str  # host[:port]/repo[:tag|@digest]
    requirements: list[str] = field(default_factory=list)
    script: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # path in /opt/mlinfra/user -> local file
    labels: dict[str, str] = field(default_factory=dict)
    tag: str | None = None
    username: str | None = None
    password: str | None = None
    insecure: bool | None = None  # plain HTTP; default: only for a loopback registry
    trusted_keys: list[str] = field(default_factory=list)  # PEM; the server verifies each model at load


@dataclass
class BuildResult:
    image_ref: str
    digest: str
    labels: dict[str, str]
    layers: list[str]
    bytes_pushed: int
    models: list[dict[str, Any]]


def split_ref(ref: str) -> tuple[str, str, str]:
    """host/repo[:tag|@digest] -> (host, repo, reference)."""
    if "/" not in ref:
        raise ImageBuildError(f"image reference {ref!r} needs a registry host, e.g. 127.0.0.1:5000/{ref}")
    host, rest = ref.split("/", 1)
    if "@" in rest:
        repo, reference = rest.split("@", 1)
    elif ":" in rest.rsplit("/", 1)[-1]:
        repo, reference = rest.rsplit(":", 1)
    else:
        repo, reference = rest, "latest"
    return host, repo, reference


def _client(host: str, spec: ImageSpec | None = None) -> RegistryClient:
    """A client for HOST: HTTPS unless it is on loopback (or SPEC says insecure for its own registry); SPEC's
    credentials only for SPEC's own registry."""
    if spec is not None and host == split_ref(spec.repository + ":x")[0]:
        return RegistryClient(registry_url(host, spec.insecure), spec.username, spec.password)
    return RegistryClient(registry_url(host))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_script(path: Path) -> None:
    """A scoring script must compile: report file and line at preview, not at run time."""
    try:
        compile(path.read_text(), str(path), "exec")
    except SyntaxError as e:
        raise ImageBuildError(f"scoring script {path}:{e.lineno}: {e.msg}") from None
    except OSError as e:
        raise ImageBuildError(f"scoring script {path} cannot be read: {e.strerror}") from None


# -- base image ---------------------------------------------------------------------------------------------------


def pin_base(base: str) -> str:
    """BASE by digest (``host/repo@sha256:…``): a tag is resolved now, so a build uses exactly that image and a tag
    that moves shows in `pulumi preview` as a change, never as a silent rebuild on another base."""
    if "@sha256:" in base:
        return base
    host, repo, _ = split_ref(base)
    return f"{host}/{repo}@{resolve_base(base)[0]}"


def resolve_base(base: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of the base image (linux/amd64 from an index)."""
    host, repo, ref = split_ref(base)
    client = _client(host)
    got = client.get_manifest(repo, ref)
    if got is None:
        raise ImageBuildError(
            f"base image {base} not found in registry {client.url}: run `make services` or push it first"
        )
    digest, manifest = got
    if "manifests" in manifest:  # an index: pick linux/amd64
        pick = next(
            (m for m in manifest["manifests"] if m.get("platform", {}).get("architecture") == "amd64"), None
        )
        if pick is None:
            raise ImageBuildError(f"base image {base} has no linux/amd64 image")
        got = client.get_manifest(repo, pick["digest"])
        assert got is not None
        digest, manifest = got
    config = json.loads(client.get_blob(repo, manifest["config"]["digest"]))
    return digest, manifest, config


def check_base_has_python(base: str, manifest: dict[str, Any], digest: str) -> None:
    """Refuse a base without /usr/bin/python3 (cached per base digest)."""
    marker = cache_dir() / "base-checks" / digest.replace(":", "_")
    if marker.exists():
        return
    host, repo, _ = split_ref(base)
    client = _client(host)
    found = False
    for layer in manifest["layers"]:
        blob = client.get_blob(repo, layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            names = {m.name.lstrip("./") for m in tar.getmembers()}
        if {"usr/bin/python3", "bin/python3", "usr/local/bin/python3"} & names:
            found = True
            break
    if not found:
        raise ImageBuildError(
            f"base image {base} has no python3 (looked for /usr/bin/python3, "
            "/usr/local/bin/python3): use a Python base image, e.g. the default python-base"
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("python3")


# -- layers ---------------------------------------------------------------------------------------------------


def deps_layer(requirements: list[str], progress: Progress) -> tuple[Layer, list[str]]:
    """The server's and the user's requirements as wheels for the base's Python (cp311, manylinux x86_64),
    installed into /opt/mlinfra/site-packages; cached by the requirement set."""
    reqs = image_requirements(requirements)
    key = _sha(json.dumps([FORMAT, _CODE, reqs, PLATFORMS]).encode())[:24]
    out = cache_dir() / "layers" / f"deps-{key}.tar.gz"
    resolved_file = out.with_suffix(".resolved.json")
    if out.exists() and resolved_file.exists():
        return _layer_meta(out), json.loads(resolved_file.read_text())
    progress(f"dependencies: resolving {len(reqs)} requirements for cp311/manylinux x86_64")
    with tempfile.TemporaryDirectory(prefix="mlinfra-deps-") as tmp:
        target = Path(tmp) / "site"
        pip_target(reqs, target)
        resolved = sorted(p.name.removesuffix(".dist-info") for p in target.glob("*.dist-info"))
        layer = layer_from_dir(target, SITE, out, mode_exec=True)
    resolved_file.write_text(json.dumps(resolved))
    return layer, resolved


def wheelhouse() -> Path:
    """Wheels of the server's requirements for the image platform, filled by `make setup`
    (python -m mlinfra.images.builder --wheelhouse), so image builds need no package index."""
    import os

    explicit = os.environ.get("MLINFRA_WHEELHOUSE")
    if explicit:
        return Path(explicit)
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return xdg / "mlinfra" / "wheelhouse-cp311-manylinux-x86_64"


def _pip_platform_args() -> list[str]:
    args = [
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


HASHES = "hashes.json"


def wheel_hashes(wh: Path | None = None) -> dict[str, str]:
    """{wheel file name: sha256} recorded when the wheels were downloaded into the wheelhouse."""
    try:
        return dict(json.loads(((wh or wheelhouse()) / HASHES).read_text()))
    except (OSError, ValueError):
        return {}


def wheels_of(dists: list[str]) -> dict[str, str]:
    """{wheel file name: sha256} in the wheelhouse of the distributions DISTS ("name-version", as dist-info folders
    and resolved requirement lists name them)."""

    def prefix(dist: str) -> str:
        name, _, version = dist.rpartition("-")
        return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"

    prefixes = tuple(prefix(d) for d in dists)
    return {w: h for w, h in sorted(wheel_hashes().items()) if w.lower().startswith(prefixes)}


def _record_hashes(wh: Path) -> dict[str, str]:
    """Record the sha256 of every wheel that has none yet (a download just made, or a wheelhouse from before hashes
    were kept); recorded hashes never change."""
    known = wheel_hashes(wh)
    fresh = {p.name: sha256_file(p) for p in sorted(wh.glob("*.whl")) if p.name not in known}
    if fresh:
        known.update(fresh)
        write_atomic(wh / HASHES, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return known


def fill_wheelhouse(reqs: list[str] | None = None) -> Path:
    """Download REQS (default: the server's) and their dependencies as wheels for the image platform into the
    wheelhouse, recording each new wheel's sha256 (image builds install only wheels matching it)."""
    wh = wheelhouse()
    wh.mkdir(parents=True, exist_ok=True)
    res = _pip(["download", "--dest", str(wh), *_pip_platform_args(), *(reqs or SERVER_REQUIREMENTS)])
    if res.returncode != 0:
        raise ImageBuildError(f"pip could not download {reqs or SERVER_REQUIREMENTS}:\n{_pip_says(res)}")
    _record_hashes(wh)
    return wh


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )


def _pip_says(res: subprocess.CompletedProcess[str]) -> str:
    """pip's error output, blank lines dropped, its last 1,500 characters."""
    return "\n".join(line for line in res.stderr.strip().splitlines() if line.strip())[-1500:]


def _resolve(reqs: list[str], scratch: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """What installing REQS from the wheelhouse alone would install (pip's report), or None and pip's message."""
    report = scratch / "report.json"
    res = _pip(
        ["install", "--dry-run", "--ignore-installed", "--report", str(report), "--target", str(scratch / "t"),
         *_pip_platform_args(), "--no-index", "--find-links", str(wheelhouse()), *reqs]
    )  # fmt: skip
    if res.returncode != 0:
        return None, _pip_says(res)
    return json.loads(report.read_text())["install"], ""


def pip_target(reqs: list[str], target: Path) -> None:
    """Install REQS for the image platform into TARGET, from the wheelhouse only and with ``--require-hashes``:
    every wheel must match the sha256 recorded when it was downloaded. What the wheelhouse lacks is downloaded
    into it first (unless MLINFRA_PIP_OFFLINE=1), its hash recorded then. pip's own message is shown on failure."""
    import os

    reqs = [check_requirement(r) for r in reqs]
    with tempfile.TemporaryDirectory(prefix="mlinfra-pip-") as tmp:
        scratch = Path(tmp)
        resolved, why = _resolve(reqs, scratch)
        if resolved is None and os.environ.get("MLINFRA_PIP_OFFLINE") != "1":
            try:
                fill_wheelhouse(reqs)
            except ImageBuildError as e:
                why = str(e)
            else:
                resolved, why = _resolve(reqs, scratch)
        if resolved is None:
            raise ImageBuildError(f"pip could not install the image's requirements {reqs}:\n{why}")
        known = wheel_hashes()
        lines = []
        for item in resolved:
            url = item["download_info"]["url"]
            wheel = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            recorded = known.get(wheel)
            if recorded is None:
                raise ImageBuildError(
                    f"wheel {wheel} in the wheelhouse {wheelhouse()} has no recorded sha256 (it was not downloaded "
                    "by mlinfra): delete it, or run `make wheelhouse` to record the wheelhouse's hashes"
                )
            lines.append(
                f"{item['metadata']['name']}=={item['metadata']['version']} --hash=sha256:{recorded}"
            )
        pinned = scratch / "requirements.txt"
        pinned.write_text("\n".join(lines) + "\n")
        res = _pip(
            ["install", "--no-compile", "--target", str(target), *_pip_platform_args(), "--no-index",
             "--find-links", str(wheelhouse()), "--require-hashes", "--no-deps", "-r", str(pinned)]
        )  # fmt: skip
        if res.returncode != 0:
            msg = _pip_says(res)
            if "THESE PACKAGES DO NOT MATCH THE HASHES" in res.stderr:
                msg = f"a wheel in the wheelhouse {wheelhouse()} was changed after it was downloaded:\n{msg}"
            raise ImageBuildError(f"pip could not install the image's requirements {reqs}:\n{msg}")
    _strip_scripts(target)


def _strip_scripts(target: Path) -> None:
    """Console scripts carry the building interpreter's path in their shebang (different per checkout and machine):
    the server needs none of them, so drop them and their RECORD lines to keep the layer reproducible."""
    import shutil

    shutil.rmtree(target / "bin", ignore_errors=True)
    for record in target.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith("../../bin/")))


def _layer_meta(path: Path) -> Layer:
    meta = path.with_suffix(".meta.json")
    if meta.exists():
        m = json.loads(meta.read_text())
        return Layer(path, m["digest"], m["diff_id"], m["size"])
    import gzip

    blob = sha256_file(path)
    with gzip.open(path, "rb") as f:
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    layer = Layer(path, "sha256:" + blob, "sha256:" + h.hexdigest(), path.stat().st_size)
    meta.write_text(json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size}))
    return layer


def _cached(build: Callable[[Path], Layer], key: str, kind: str) -> Layer:
    out = cache_dir() / "layers" / f"{kind}-{key}.tar.gz"
    if out.exists():
        return _layer_meta(out)
    layer = build(out)
    out.with_suffix(".meta.json").write_text(
        json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size})
    )
    return layer


def server_files() -> list[tuple[str, Path]]:
    """The scoring server package (mlinfra_scoring) as (path relative to the image's app folder, local file)."""
    src = Path(mlinfra_scoring.__file__).parent
    return [
        (f"mlinfra_scoring/{p.relative_to(src).as_posix()}", p)
        for p in sorted(src.rglob("*.py"))
        if "__pycache__" not in p.parts
    ]


# Dockerfiles written before the runtime became `mlinfra_scoring` COPY `mlinfra/components/` and run
# `python3 -m components.scoring`: the staged context keeps that working with this shim around the same files.
_COMPAT_SHIM = {
    "components/__init__.py": "import os, sys\n\nsys.path.insert(0, os.path.dirname(__file__))  # mlinfra_scoring\n",
    "components/scoring/__init__.py": "from mlinfra_scoring import *  # noqa: F403\n",
    "components/scoring/__main__.py": "import runpy\n\nrunpy.run_module('mlinfra_scoring', run_name='__main__')\n",
}


def check_requirement(req: str) -> str:
    """One pip requirement, as PEP 508 says (``name[extras] (op version)... ; marker``), normalized; anything else —
    pip options (``--index-url``, ``-e``, ``-r``), URLs and direct references, several lines — is refused naming it:
    a requirement string must not be able to point pip at another index or run another build."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = req.strip() if isinstance(req, str) else req
    if not isinstance(text, str) or not text:
        raise ImageBuildError(f"requirement {req!r} is empty or not a string")
    if text.startswith("-") or any(c in text for c in "\r\n\0") or " -" in text:
        raise ImageBuildError(
            f"requirement {text[:120]!r} carries pip options: give only a package and its version, e.g. "
            "'scikit-learn==1.5.2' (indexes and flags are not settable per image)"
        )
    try:
        parsed = Requirement(text)
    except InvalidRequirement as e:
        raise ImageBuildError(f"requirement {text[:120]!r} is not a valid requirement: {e}") from None
    if parsed.url:
        raise ImageBuildError(
            f"requirement {text[:120]!r} is a direct reference ({parsed.url[:80]}): pin a released version, e.g. "
            f"'{parsed.name}==X.Y' (wheels come from the index or the wheelhouse, hash-checked)"
        )
    return str(parsed)


def image_requirements(extra: list[str]) -> list[str]:
    """The server's requirements plus the user's (each checked), deduplicated and sorted."""
    return sorted(set(SERVER_REQUIREMENTS) | {check_requirement(r) for r in extra if r.strip()})


def app_layer(spec: ImageSpec, front: Path | None) -> Layer:
    """The scoring server package, the native gRPC front end FRONT (when built), the user's script and extra
    files."""
    entries = []
    for rel, p in server_files():
        data = p.read_bytes()
        entries.append(Entry(f"{APP}/{rel}", len(data), data))
    if front is not None:  # MLINFRA_SERVE_GRPC_FRONTEND in build_and_push
        data = front.read_bytes()
        entries.append(Entry(grpcfront.IMAGE_PATH, len(data), data, mode=0o755))
    if spec.script:
        data = spec.script.read_bytes()
        entries.append(Entry(f"{USER_DIR}/{spec.script.name}", len(data), data))
    for dest, path in sorted(spec.files.items()):
        data = path.read_bytes()
        entries.append(Entry(f"{USER_DIR}/{dest.lstrip('/')}", len(data), data))
    key = _sha(
        json.dumps(
            [
                FORMAT,
                _CODE,
                [(e.path, _sha(e.source)) for e in entries if isinstance(e.source, bytes)],
            ]
        ).encode()
    )[:24]
    return _cached(functools.partial(_build_entries, entries), key, "app")


def trust_files(spec: ImageSpec) -> dict[str, bytes]:
    """What a scoring server needs to verify its models at load (mlinfra_scoring.provenance), by path under the trust
    folder: ``keys/<key id>.pem`` for each trusted key, ``signatures/<model>/<version>/<key id>.json`` for each of
    the models' bundles. Empty without trusted keys."""
    if not spec.trusted_keys:
        return {}
    from mlinfra.registry.signing import key_id, signatures

    files = {f"keys/{key_id(pem)}.pem": pem.encode() for pem in spec.trusted_keys}
    for m in spec.models:
        reg, _mv = _resolve_model(m)
        for kid, bundle in signatures(reg, m.name, m.version).items():
            files[f"signatures/{m.name}/{m.version}/{kid}.json"] = bundle
    return dict(sorted(files.items()))


def trust_layer(spec: ImageSpec) -> Layer | None:
    files = trust_files(spec)
    if not files:
        return None
    entries = [Entry(f"{TRUST}/{rel}", len(data), data) for rel, data in files.items()]
    key = _sha(
        json.dumps(
            [FORMAT, _CODE, [(e.path, _sha(data)) for e, data in zip(entries, files.values(), strict=False)]]
        ).encode()
    )
    return _cached(functools.partial(_build_entries, entries), key[:24], "trust")


def _build_entries(entries: list[Entry], out: Path) -> Layer:
    return build_layer(entries, out)


def _file_chunks(reg: ModelRegistry, entry: dict[str, Any]) -> Callable[[], Iterator[bytes]]:
    return lambda: reg.iter_file(entry)


def _resolve_model(m: ModelInput) -> tuple[ModelRegistry, Any]:
    """The registry and record of a model input, refusing a record whose sha256 moved."""
    reg = ModelRegistry(m.registry, m.credential)
    mv = reg.resolve(f"{m.name}:{m.version}")
    if mv.sha256 != m.sha256:
        raise ImageBuildError(
            f"model {m.name}:{m.version} in {reg.uri} has sha256 {mv.sha256[:12]}…, expected "
            f"{m.sha256[:12]}…: the registry record changed; re-register the model"
        )
    return reg, mv


def model_layer(m: ModelInput, progress: Progress) -> tuple[Layer, str]:
    """One model version's files at /models/<name>/<version>/, streamed from its registry and verified."""
    reg, mv = _resolve_model(m)
    base = f"/models/{m.name}/{m.version}"
    entries = [
        Entry(f"{base}/{f['path']}", int(f["size"]), _file_chunks(reg, f), 0o644, f["sha256"])
        for f in mv.files
    ]
    serve_path = base if mv.is_dir else f"{base}/{mv.files[0]['path']}"
    # The files' names are part of the layer: the same bytes registered as another file name are another layer.
    files = [[f["path"], f["sha256"]] for f in mv.files]
    key = _sha(json.dumps([FORMAT, _CODE, m.name, m.version, m.sha256, files]).encode())[:24]

    def build(out: Path) -> Layer:
        progress(
            f"model {m.name}:{m.version}: streaming {mv.size_bytes:,d} bytes from {reg.uri} (sha256 verified)"
        )
        try:
            return build_layer(entries, out)
        except ValueError as e:
            raise ImageBuildError(
                f"model {m.name}:{m.version} in {reg.uri}: stored content does not match its "
                f"sha256 ({e}): the registry copy is corrupt; re-register the model"
            ) from None

    return _cached(build, key, "model"), serve_path


# -- build --------------------------------------------------------------------------------------------------------


def build_and_push(spec: ImageSpec, progress: Progress = lambda _m: None) -> BuildResult:
    if not spec.models:
        raise ImageBuildError("a scoring image needs at least one model")
    names = [m.name for m in spec.models]
    if len(set(names)) != len(names):
        raise ImageBuildError(f"model names in one image must be unique, got {names}")
    if spec.script:
        check_script(spec.script)
    base_digest, base_manifest, base_config = resolve_base(spec.base)
    check_base_has_python(spec.base, base_manifest, base_digest)
    deps, resolved = deps_layer(spec.requirements, progress)
    front = grpcfront.binary(progress)
    app = app_layer(spec, front)
    trust = trust_layer(spec)
    models = sorted(spec.models, key=lambda m: m.name)
    model_layers = [model_layer(m, progress) for m in models]

    labels = {
        "org.opencontainers.image.base.digest": base_digest,
        "mlinfra.image.format": FORMAT,
        "mlinfra.image.requirements": ",".join(resolved),
        **{
            k: v
            for i, m in enumerate(models)
            for k, v in {
                f"mlinfra.model.{i}.name": m.name,
                f"mlinfra.model.{i}.version": str(m.version),
                f"mlinfra.model.{i}.sha256": m.sha256,
            }.items()
        },
        **spec.labels,
    }
    base_env = [e for e in base_config.get("config", {}).get("Env", []) if not e.startswith("PYTHONPATH=")]
    env = [
        *base_env,
        f"PYTHONPATH={SITE}:{APP}:{USER_DIR}",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        f"MLINFRA_SERVE_MODEL={':'.join(p for _, p in model_layers)}",
        f"MLINFRA_SERVE_NAME={','.join(m.name for m in models)}",
        f"MLINFRA_SERVE_VERSION={','.join(str(m.version) for m in models)}",
        "MLINFRA_SERVE_HOST=0.0.0.0",
        f"MLINFRA_SERVE_PORT={PORT}",
        f"MLINFRA_SERVE_GRPC_PORT={GRPC_PORT}",
        # gRPC through the native front end when the image carries it (else the in-process grpcio service).
        f"MLINFRA_SERVE_GRPC_FRONTEND={grpcfront.IMAGE_PATH if front else 'grpcio'}",
    ]
    if spec.script:
        env.append(f"MLINFRA_SERVE_SCRIPT={USER_DIR}/{spec.script.name}")
    if trust is not None:
        env.append(f"MLINFRA_SERVE_TRUST={TRUST}")
    layers = [deps, app, *([trust] if trust else []), *[layer for layer, _ in model_layers]]
    config = image_config(
        diff_ids=[*base_config["rootfs"]["diff_ids"], *[layer.diff_id for layer in layers]],
        env=sorted(env),
        entrypoint=["python3", "-m", "mlinfra_scoring"],
        user="10001:10001",
        workdir="/opt/mlinfra",
        labels=labels,
        exposed_ports=[PORT, GRPC_PORT],
        healthcheck=[
            "CMD",
            "python3",
            "-c",
            # The port the server listens on (MLINFRA_SERVE_PORT may move it).
            "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % "
            f"os.environ.get('MLINFRA_SERVE_PORT', '{PORT}'), timeout=2)",
        ],
    )

    host, repo, _ = split_ref(spec.repository + ":latest")
    target = _client(host, spec)
    base_host, base_repo, _ = split_ref(spec.base)
    pushed = 0
    try:
        for layer in base_manifest["layers"]:
            if target.blob_exists(repo, layer["digest"]):
                continue
            if base_host == host and _mount(target, repo, base_repo, layer["digest"]):
                continue
            data = _client(base_host).get_blob(base_repo, layer["digest"])
            target.push_blob(repo, layer["digest"], data)
            pushed += len(data)
        for layer in layers:
            if target.push_blob(repo, layer.digest, layer.path):
                pushed += layer.size
        config_digest = "sha256:" + _sha(config)
        if target.push_blob(repo, config_digest, config):
            pushed += len(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {"mediaType": CONFIG_V1, "digest": config_digest, "size": len(config)},
                "layers": [
                    *[
                        {
                            "mediaType": bl.get("mediaType", LAYER_GZIP),
                            "digest": bl["digest"],
                            "size": bl["size"],
                        }
                        for bl in base_manifest["layers"]
                    ],
                    *[
                        {"mediaType": LAYER_GZIP, "digest": layer.digest, "size": layer.size}
                        for layer in layers
                    ],
                ],
                "annotations": {"org.opencontainers.image.base.digest": base_digest},
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        digest = "sha256:" + _sha(manifest)
        if target.manifest_digest(repo, digest) is None:
            target.put_manifest(repo, digest, manifest)
            pushed += len(manifest)
        # A digest tag (sha256-<hex>, as cosign does) keeps every build listable; the user's tag may move.
        for tag in filter(None, [digest.replace(":", "-"), spec.tag]):
            if target.manifest_digest(repo, tag) != digest:
                target.put_manifest(repo, tag, manifest)
    except OciRegistryError as e:
        raise ImageBuildError(str(e)) from None
    return BuildResult(
        image_ref=f"{host}/{repo}@{digest}",
        digest=digest,
        labels=labels,
        layers=[bl["digest"] for bl in base_manifest["layers"]] + [layer.digest for layer in layers],
        bytes_pushed=pushed,
        models=[{"name": m.name, "version": m.version, "sha256": m.sha256} for m in models],
    )


def _copy_manifest(
    src: RegistryClient,
    dst: RegistryClient,
    source: tuple[str, str],
    dest: tuple[str, str],
    digest: str,
    reference: str,
) -> str:
    """Copy manifest DIGEST of SOURCE (host, repo) and its blobs to DEST under REFERENCE (the digest, or a tag);
    every blob and the manifest are checked against their digests. Returns the digest DEST reports."""
    (host, repo), (dhost, drepo) = source, dest
    status, headers, raw = src.request("GET", f"/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT})
    if status != 200:
        raise OciRegistryError(f"registry {host} has no image {repo}@{digest} (HTTP {status})")
    if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
        raise OciRegistryError(f"registry {host} returned a manifest for {repo}@{digest} with another digest")
    manifest = json.loads(raw)
    for blob in [manifest["config"], *manifest.get("layers", [])]:
        d = blob["digest"]
        if dst.blob_exists(drepo, d) or (dhost == host and _mount(dst, drepo, repo, d)):
            continue
        data = src.get_blob(repo, d)
        if "sha256:" + hashlib.sha256(data).hexdigest() != d:
            raise OciRegistryError(
                f"blob {d} of {host}/{repo}@{digest} does not match its digest: not copied"
            )
        dst.push_blob(drepo, d, data)
    media = headers.get("content-type") or manifest.get("mediaType") or MANIFEST_V2
    return dst.put_manifest(drepo, reference, raw, media)


def _mount(client: RegistryClient, repo: str, from_repo: str, digest: str) -> bool:
    status, _, _ = client.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}")
    return status == 201


def list_images(registry_url: str, model: str | None = None) -> list[dict[str, Any]]:
    """Images in a registry built by mlinfra (label mlinfra.image.format), optionally using MODEL."""
    client = RegistryClient(registry_url)
    status, _, data = client.request("GET", "/v2/_catalog?n=1000")
    if status != 200:
        raise OciRegistryError(f"registry {registry_url} refused the catalog: HTTP {status}")
    out = []
    for repo in json.loads(data).get("repositories", []):
        st, _, td = client.request("GET", f"/v2/{repo}/tags/list")
        tags = (json.loads(td).get("tags") or []) if st == 200 else []
        manifests = {tag: client.get_manifest(repo, tag) for tag in tags}
        tags_of: dict[str, list[str]] = {}
        for tag, m in manifests.items():
            if m is not None:
                tags_of.setdefault(m[0], []).append(tag)
        seen: set[str] = set()
        for got in manifests.values():
            if got is None or "config" not in got[1] or got[0] in seen:
                continue
            seen.add(got[0])
            cfg = json.loads(client.get_blob(repo, got[1]["config"]["digest"]))
            labels = cfg.get("config", {}).get("Labels") or {}
            if "mlinfra.image.format" not in labels:
                continue
            models = models_of(labels)
            if model and model not in {m["name"] for m in models}:
                continue
            host = registry_url.split("://", 1)[-1]
            out.append(
                {
                    "image_ref": f"{host}/{repo}@{got[0]}",
                    "repository": repo,
                    "tags": tags_of[got[0]],
                    "models": models,
                }
            )
    return out


# -- a user's Dockerfile, built by the Docker engine ---------------------------------------------------------------

DOCKER = "/usr/bin/docker"  # Debian's CLI (with BuildKit), not a newer one earlier on PATH


def docker_context(
    spec: ImageSpec,
    context: Path,
    dest: Path,
    progress: Progress = lambda _m: None,
    trust: dict[str, bytes] | None = None,
) -> None:
    """Stage a build context: the user's context plus what a scoring Dockerfile COPYs —
    `mlinfra/app/` (the scoring server package mlinfra_scoring; also as `mlinfra/components/` for older Dockerfiles) and `mlinfra/models/<name>/<version>/` (verified model files)."""
    import shutil

    # .mlinfra/ (state, staged contexts) and bytecode are never part of a build context (nor of its hash).
    shutil.copytree(
        context, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".mlinfra", "__pycache__")
    )
    for rel, p in server_files():
        for layout in ("app", "components"):  # app/: today's layout; components/: Dockerfiles from before
            (dest / "mlinfra" / layout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest / "mlinfra" / layout / rel)
    for rel, text in _COMPAT_SHIM.items():
        (dest / "mlinfra" / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / "mlinfra" / rel).write_text(text)
    reqs = image_requirements(spec.requirements)
    (dest / "mlinfra" / "requirements.txt").write_text("\n".join(reqs) + "\n")
    pip_target(reqs, dest / "mlinfra" / "site-packages")
    for m in spec.models:
        reg, mv = _resolve_model(m)
        progress(f"model {m.name}:{m.version}: staging {mv.size_bytes:,d} bytes for the Docker build")
        folder = dest / "mlinfra" / "models" / m.name / str(m.version)
        folder.mkdir(parents=True, exist_ok=True)  # a single-file model lands inside it under its own name
        try:
            reg.download(f"{m.name}:{m.version}", folder)
        except Exception as e:
            raise ImageBuildError(f"model {m.name}:{m.version}: {e}") from None
    # With trusted keys: `COPY mlinfra/trust/ /opt/mlinfra/trust/` and `ENV MLINFRA_SERVE_TRUST=/opt/mlinfra/trust`.
    for rel, data in (trust_files(spec) if trust is None else trust).items():
        (dest / "mlinfra" / "trust" / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / "mlinfra" / "trust" / rel).write_bytes(data)


def check_trusted(models: list[ModelInput], trusted: list[str]) -> None:
    """With trusted keys, every model must carry a valid signature by one of them: else ImageBuildError naming the
    version and why (mlinfra.registry.signing). Nothing is packaged before this passes."""
    if not trusted:
        return
    from mlinfra.registry.signing import SignatureError, require_trusted

    for m in models:
        reg, _mv = _resolve_model(m)
        try:
            require_trusted(reg, m.name, m.version, trusted)
        except SignatureError as e:
            raise ImageBuildError(f"refusing to package: {e}") from None


def stage_docker_context(spec: ImageSpec, context: Path, dest: Path, context_sha256: str) -> str:
    """Stage the build context of a user's Dockerfile in DEST (see :func:`docker_context`) unless DEST already holds
    exactly these inputs; returns their key (sha256 of the models, requirements, scoring server and the user's
    context). The docker-build provider hashes DEST at every preview: staging is byte-for-byte deterministic (file
    modes kept, no bytecode, no build paths), so unchanged inputs are no change."""
    import os
    import shutil

    server = [(rel, sha256_file(p)) for rel, p in server_files()]
    trust = trust_files(spec)  # read from the registry once: keyed here, written below
    key = _sha(
        json.dumps(
            [
                FORMAT,
                [
                    (m.name, m.version, m.sha256)
                    for m in sorted(spec.models, key=lambda m: (m.name, m.version))
                ],
                image_requirements(spec.requirements),
                server,
                context_sha256,
                [(rel, _sha(data)) for rel, data in trust.items()],
            ]
        ).encode()
    )
    marker = dest.with_name(dest.name + ".key")
    if dest.is_dir() and marker.is_file() and marker.read_text() == key:
        return key
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.staging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        docker_context(spec, context, tmp, trust=trust)
        marker.unlink(missing_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        marker.write_text(key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return key


def model_labels(models: list[ModelInput], extra: dict[str, str]) -> dict[str, str]:
    """The OCI labels of an image built from a user's Dockerfile: each model's name, version and sha256 (what
    `mlinfra images list`, promotion and the pinned-image check read), the format, then the user's own."""
    labels = {}
    for i, m in enumerate(sorted(models, key=lambda m: m.name)):
        labels[f"mlinfra.model.{i}.name"] = m.name
        labels[f"mlinfra.model.{i}.version"] = str(m.version)
        labels[f"mlinfra.model.{i}.sha256"] = m.sha256
    labels["mlinfra.image.format"] = f"{FORMAT}-dockerfile"
    return {**labels, **dict(sorted(extra.items()))}


def models_of(labels: dict[str, str]) -> list[dict[str, Any]]:
    """The models an mlinfra image packages, from its labels (name, version, sha256 each)."""
    models = []
    i = 0
    while f"mlinfra.model.{i}.name" in labels:
        models.append(
            {
                "name": labels[f"mlinfra.model.{i}.name"],
                "version": int(labels[f"mlinfra.model.{i}.version"]),
                "sha256": labels[f"mlinfra.model.{i}.sha256"],
            }
        )
        i += 1
    return models


DIGEST_REF = re.compile(r"^[^\s@]+/[^\s@]+@sha256:[0-9a-f]{64}$")


def inspect_image(ref: str, spec: ImageSpec | None = None) -> dict[str, Any] | None:
    """host/repo@sha256:… → {digest, labels, models} from the registry, or None when it does not hold it (with
    SPEC's credentials when it is SPEC's own registry)."""
    host, repo, reference = split_ref(ref)
    client = _client(host, spec)
    got = client.get_manifest(repo, reference)
    if got is None:
        return None
    labels: dict[str, str] = {}
    if "config" in got[1]:
        cfg = json.loads(client.get_blob(repo, got[1]["config"]["digest"]))
        labels = cfg.get("config", {}).get("Labels") or {}
    return {"digest": got[0], "labels": labels, "models": models_of(labels)}


def copy_image(ref: str, repository: str) -> str:
    """Copy image REF (host/repo@sha256:…) into REPOSITORY (host/repo, any registry) by content: blobs are mounted
    or streamed and checked against their digests, and the manifest's digest must come out identical. Its
    attestations (cosign's ``sha256-<hex>.att``: the signed provenance) come along. Returns the new
    host/repo@sha256:… reference."""
    from mlinfra.images.attest import attestation_tag

    host, repo, digest = split_ref(ref)
    dhost, drepo, _ = split_ref(repository + ":x")
    src, dst = _client(host), _client(dhost)
    got = _copy_manifest(src, dst, (host, repo), (dhost, drepo), digest, digest)
    if got != digest:
        raise OciRegistryError(f"copied manifest of {ref} came out as {got} in {dhost}/{drepo}")
    att = attestation_tag(digest)
    att_digest = src.manifest_digest(repo, att)
    if att_digest:
        _copy_manifest(src, dst, (host, repo), (dhost, drepo), att_digest, att)
    return f"{dhost}/{drepo}@{digest}"
