"""The model registry: named models with immutable, content-addressed versions, tags, aliases and users.

Layout (the same keys in a local folder or under an Azure Blob container/prefix; plain JSON, readable by any tool):

    blobs/sha256/<hex>                        a model file's bytes, stored once per content
    models/<name>/versions/<n:010d>.json      version record — immutable: sha256, size, files, framework,
                                              signature, properties, created_at
    models/<name>/meta/<n:010d>.json          mutable metadata of version n: tags, description
    models/<name>/sha256/<hex>.json           content index: {"version": n}, or a claim while n is being made
    models/<name>/aliases/<alias>.json        {"version": n}
    models/<name>/users/<n:010d>/<user>.json  who uses version n (images, endpoints); deletion is refused while any

Protocol (docs/registry.md): files are uploaded first (content-addressed, visible only when complete); then the
content index is claimed with create-if-absent, so one writer per content; then the version number is taken
with create-if-absent on the version record (the commit point), retrying n+1 on conflict; then the index is
pointed at it. A writer killed anywhere leaves either nothing visible or a stale claim that the next writer for
that content takes over (after checking whether the killed writer had already committed a version).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlinfra.errors import ModelError
from mlinfra.files import sha256_file
from mlinfra.registry.signature import onnx_signature
from mlinfra.registry.store import ContentMismatch, ModelRegistryError, Progress, Store, open_store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 +\-./:=_]*$")
MAX_NAME = 255
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_TAGS = 50
FRAMEWORKS = ("onnx", "custom")
STALE_CLAIM_S = 600.0
STALE_PENDING_S = 3600.0  # a writer may upload for long: its pending marker counts for an hour


def validate_name(name: object, what: str = "model name") -> str:
    if not isinstance(name, str) or not name:
        raise ModelError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME:
        raise ModelError(f"{what} has {len(name)} characters; the limit is {MAX_NAME}: shorten it")
    if ".." in name or not NAME_RE.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
        shown = ", ".join(repr(c) for c in bad) if bad else "'..'"
        raise ModelError(
            f"{what} {name!r} is not allowed ({shown}): use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, without '..'"
        )
    return name


def validate_tags(tags: object, what: str = "tags") -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise ModelError(f"{what} must be a mapping of strings, got {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ModelError(f"{what}: {len(tags)} entries; the limit is {MAX_TAGS}")
    out: dict[str, str] = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not k or len(k) > MAX_TAG_KEY or not TAG_KEY_RE.match(k):
            raise ModelError(
                f"{what} key {str(k)[:40]!r}: keys are 1..{MAX_TAG_KEY} characters of letters, digits, space and "
                "+-./:=_"
            )
        if not isinstance(v, str):
            raise ModelError(f"{what}[{k!r}] must be a string, got {type(v).__name__}: quote it")
        if len(v) > MAX_TAG_VALUE:
            raise ModelError(f"{what}[{k!r}] has {len(v)} characters; the limit is {MAX_TAG_VALUE}")
        if any(ord(c) < 32 for c in v):
            raise ModelError(f"{what}[{k!r}] contains control characters: remove them")
        out[k] = v
    return dict(sorted(out.items()))


# -- content -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    sha256: str
    size: int


@dataclass(frozen=True)
class Content:
    sha256: str
    size_bytes: int
    files: tuple[FileEntry, ...]
    is_dir: bool


def scan_content(path: Path, progress: Progress | None = None) -> Content:
    """Hash a model file or folder. A file's sha256 is its bytes'; a folder's is the sha256 of its sorted file
    list (path, sha256, size) as canonical JSON."""
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist: point path at the model file or folder")
    if path.is_file():
        if path.stat().st_size == 0:
            raise ModelError(f"model file {str(path)!r} is empty (0 bytes): point path at the exported model")
        digest = sha256_file(path, progress)
        entry = FileEntry(path.name, digest, path.stat().st_size)
        return Content(digest, entry.size, (entry,), False)
    if not path.is_dir():  # a device, a pipe, a socket: nothing a model is
        raise ModelError(
            f"model path {str(path)!r} is neither a file nor a folder: point path at the model file or folder"
        )
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise ModelError(f"model folder {str(path)!r} has no files")
    entries = tuple(
        FileEntry(p.relative_to(path).as_posix(), sha256_file(p, progress), p.stat().st_size) for p in files
    )
    manifest = json.dumps([[e.path, e.sha256, e.size] for e in entries], separators=(",", ":"))
    return Content(hashlib.sha256(manifest.encode()).hexdigest(), sum(e.size for e in entries), entries, True)


# -- records -----------------------------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_files(files: Any, is_dir: bool, where: str) -> None:
    """A version record's file list, checked where it is written and wherever it is read (download, image builds,
    copies, edge manifests): each path relative, '/'-separated, normalized, without '..' or '.', NUL or '\\', and
    unique; each sha256 64 lowercase hex (it names a blob key); each size a non-negative integer. A record failing
    this is refused, named (WHERE), before any of its paths touches a disk."""

    def bad(what: str) -> ModelRegistryError:
        return ModelRegistryError(
            f"{where}: {what}: refusing this version record (it could write outside its folder or read another "
            "key); it was not written by mlinfra — restore the record from a backup or register the model again"
        )

    if not isinstance(files, list) or not files:
        raise bad("'files' is not a non-empty list")
    if not is_dir and len(files) != 1:
        raise bad(f"a single-file version lists {len(files)} files")
    seen: set[str] = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise bad(f"files[{i}] is not an object")
        path, sha, size = f.get("path"), f.get("sha256"), f.get("size")
        if not isinstance(path, str) or not path:
            raise bad(f"files[{i}].path {path!r} is not a file name")
        parts = path.split("/")
        if (
            path.startswith("/")
            or "\\" in path
            or "\0" in path
            or any(part in ("", ".", "..") for part in parts)
            or (not is_dir and len(parts) != 1)
        ):
            raise bad(f"files[{i}].path {path[:120]!r} is not a relative, normalized path inside the version")
        if path in seen:
            raise bad(f"files[{i}].path {path!r} is listed twice")
        seen.add(path)
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"files[{i}].sha256 {str(sha)[:80]!r} is not 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"files[{i}].size {size!r} is not a byte count")


@dataclass
class ModelVersion:
    name: str
    version: int
    sha256: str
    size_bytes: int
    framework: str
    files: list[dict[str, Any]]
    signature: dict[str, Any] | None
    properties: dict[str, str]
    created_at: str
    is_dir: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    uri: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "framework": self.framework,
            "files": self.files,
            "signature": self.signature,
            "properties": self.properties,
            "created_at": self.created_at,
            "is_dir": self.is_dir,
            "tags": self.tags,
            "description": self.description,
            "uri": self.uri,
        }


def _vkey(n: int) -> str:
    return f"{n:010d}"


def signatures_prefix(name: str, version: int) -> str:
    """Where NAME:VERSION's signature bundles live: ``<prefix><key id>.json`` (mlinfra.registry.signing)."""
    return f"models/{name}/signatures/{_vkey(version)}/"


def _whoami() -> dict[str, Any]:
    """Who writes a claim or marker, and when: what :func:`_stale` judges it by."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}


def _stale(data: dict[str, Any], max_age_s: float) -> bool:
    """A claim or marker left by a process that is no longer at work: older than MAX_AGE_S, or from a process of
    this host that is gone."""
    return time.time() - float(data.get("at", 0)) > max_age_s or (
        data.get("host") == socket.gethostname() and not _pid_alive(int(data.get("pid", 0)))
    )


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class ModelRegistry:
    """A registry at a URI (see :func:`mlinfra.registry.store.open_store`)."""

    def __init__(self, uri: str, credential: str | None = None, store: Store | None = None):
        self.store: Store = store or open_store(uri, credential)
        self.uri = self.store.uri
        self._checked = False

    def _ready(self) -> None:
        if not self._checked:
            self.store.check()
            self._checked = True

    # -- reading ------------------------------------------------------------------------------------------------

    def _read_json(self, key: str) -> tuple[dict[str, Any], str] | None:
        got = self.store.get(key)
        if got is None:
            return None
        return json.loads(got[0]), got[1]

    def versions(self, name: str) -> list[int]:
        self._ready()
        out = []
        for key in self.store.list(f"models/{name}/versions/"):
            stem = key.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def names(self) -> list[str]:
        self._ready()
        return sorted({k.split("/")[1] for k in self.store.list("models/") if k.count("/") >= 3})

    def get(self, name: str, version: int) -> ModelVersion | None:
        self._ready()
        rec = self._read_json(f"models/{name}/versions/{_vkey(version)}.json")
        if rec is None:
            return None
        meta = self._read_json(f"models/{name}/meta/{_vkey(version)}.json")
        data = rec[0]
        where = f"{name}:{version} in {self.uri} (models/{name}/versions/{_vkey(version)}.json)"
        if not isinstance(data, dict) or data.get("name") != name or data.get("version") != version:
            raise ModelRegistryError(f"{where}: the record names another model or version: refusing it")
        check_files(data.get("files"), bool(data.get("is_dir", False)), where)
        mv = ModelVersion(
            name=data["name"],
            version=data["version"],
            sha256=data["sha256"],
            size_bytes=data["size_bytes"],
            framework=data["framework"],
            files=data["files"],
            signature=data.get("signature"),
            properties=data.get("properties", {}),
            created_at=data["created_at"],
            is_dir=data.get("is_dir", False),
        )
        if meta:
            mv.tags = meta[0].get("tags", {})
            mv.description = meta[0].get("description", "")
            mv.properties = meta[0].get("properties", mv.properties)
        mv.uri = f"{self.uri}#models/{name}/versions/{version}"
        return mv

    def resolve(self, ref: str) -> ModelVersion:
        """NAME (latest), NAME:VERSION or NAME@ALIAS."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            validate_name(name)
            a = self._read_json(f"models/{name}/aliases/{alias}.json")
            if a is None:
                raise ModelError(
                    f"model {name!r} has no alias {alias!r}: set it with ModelAlias or pick a version"
                )
            version = int(a[0]["version"])
        elif ":" in ref:
            name, v = ref.rsplit(":", 1)
            validate_name(name)
            if not v.isdigit() or int(v) < 1:
                raise ModelError(f"version {v!r} in {ref!r} must be a positive integer")
            version = int(v)
        else:
            name = validate_name(ref)
            vs = self.versions(name)
            if not vs:
                raise ModelError(f"model {name!r} is not registered in {self.uri}")
            version = vs[-1]
        mv = self.get(name, version)
        if mv is None:
            raise ModelError(
                f"model {name!r} has no version {version} in {self.uri} (has: {self.versions(name)})"
            )
        return mv

    def find_by_content(self, name: str, sha256: str) -> int | None:
        idx = self._read_json(f"models/{name}/sha256/{sha256}.json")
        if idx and isinstance(idx[0].get("version"), int) and self.get(name, idx[0]["version"]):
            return int(idx[0]["version"])
        return None

    def search(
        self,
        tags: dict[str, str] | None = None,
        properties: dict[str, str] | None = None,
        name: str | None = None,
    ) -> list[ModelVersion]:
        out = []
        for n in [name] if name else self.names():
            for v in self.versions(n):
                mv = self.get(n, v)
                if mv is None:
                    continue
                if tags and any(mv.tags.get(k) != val for k, val in tags.items()):
                    continue
                if properties and any(mv.properties.get(k) != val for k, val in properties.items()):
                    continue
                out.append(mv)
        return out

    # -- registering --------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        path: Path | str,
        framework: str = "onnx",
        description: str | None = None,
        tags: dict[str, str] | None = None,
        properties: dict[str, str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        content: Content | None = None,
    ) -> tuple[ModelVersion, bool]:
        """Register PATH as the next version of NAME unless a version has the same content. Returns the version
        and whether it was created. For an existing version with the same content, the tags, description and
        properties given (not None) replace its metadata in place."""
        validate_name(name)
        keep = {"tags": tags is None, "description": description is None, "properties": properties is None}
        tags = validate_tags(tags)
        properties = validate_tags(properties, "properties")
        description = description or ""
        if framework not in FRAMEWORKS:
            raise ModelError(f"framework {framework!r} is not supported: use one of {', '.join(FRAMEWORKS)}")
        path = Path(path)
        content = content or scan_content(
            path, (lambda d, t: progress("hashing", d, t)) if progress else None
        )
        signature = onnx_signature(path) if framework == "onnx" else None
        self._ready()

        def update_existing(version: int) -> ModelVersion:
            cur = self.get(name, version)
            assert cur is not None
            return self.set_metadata(
                name,
                version,
                cur.tags if keep["tags"] else tags,
                cur.description if keep["description"] else description,
                cur.properties if keep["properties"] else properties,
            )

        check_files(
            [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in content.files],
            content.is_dir,
            f"registering {name} from {path}",
        )
        held = self._hold_blobs([e.sha256 for e in content.files])
        try:
            return self._register(name, path, framework, description, tags, properties, progress, content,
                                  signature, update_existing)  # fmt: skip
        finally:
            self._release(held)

    def _register(
        self,
        name: str,
        path: Path,
        framework: str,
        description: str,
        tags: dict[str, str],
        properties: dict[str, str],
        progress: Callable[[str, int, int], None] | None,
        content: Content,
        signature: Any,
        update_existing: Callable[[int], ModelVersion],
    ) -> tuple[ModelVersion, bool]:
        existing = self.find_by_content(name, content.sha256)
        if existing is not None:
            # The same content again: its version, with any blob lost meanwhile put back from these same bytes.
            for entry in content.files:
                key = f"blobs/sha256/{entry.sha256}"
                if not self.store.exists(key):
                    self.store.upload_file(key, path / entry.path if content.is_dir else path, entry.sha256)
            return update_existing(existing), False

        # 1. bytes first, content-addressed; skipped when the registry has them.
        done = 0
        for entry in content.files:
            key = f"blobs/sha256/{entry.sha256}"
            src = path / entry.path if content.is_dir else path
            if not self.store.exists(key):
                base = done

                def report(d: int, _t: int, base: int = base) -> None:
                    if progress:
                        progress("uploading", base + d, content.size_bytes)

                self.store.upload_file(key, src, entry.sha256, report)
            done += entry.size
            if progress:
                progress("uploading", done, content.size_bytes)

        # 2. claim the content, 3. take a version number, 4. point the index at it.
        index_key = f"models/{name}/sha256/{content.sha256}.json"
        claim = self._claim(index_key)
        if claim is None:  # someone else committed this content meanwhile
            found = self.find_by_content(name, content.sha256)
            assert found is not None
            return update_existing(found), False
        claim_etag, took_over = claim
        # Only a writer that died after committing its version leaves a stale claim with a version behind it.
        recovered = (
            next(
                (v for v in self.versions(name) if (g := self.get(name, v)) and g.sha256 == content.sha256),
                None,
            )
            if took_over
            else None
        )
        if recovered is None:
            record = {
                "name": name,
                "sha256": content.sha256,
                "size_bytes": content.size_bytes,
                "framework": framework,
                "files": [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in content.files],
                "signature": signature,
                "properties": properties,
                "is_dir": content.is_dir,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "format": 1,
            }
            n = (self.versions(name) or [0])[-1] + 1
            while True:
                record["version"] = n
                if self.store.put_if_absent(f"models/{name}/versions/{_vkey(n)}.json", _dump(record)):
                    break
                n += 1
            self.store.put(
                f"models/{name}/meta/{_vkey(n)}.json",
                _dump({"tags": tags, "description": description, "properties": properties}),
            )
            version = n
        else:
            version = recovered
        if not self.store.put_if_match(index_key, _dump({"version": version}), claim_etag):
            self.store.put(index_key, _dump({"version": version}))
        mv = self.get(name, version)
        assert mv is not None
        if recovered is not None:
            mv = update_existing(version)
        return mv, recovered is None

    def _claim(self, key: str) -> tuple[str, bool] | None:
        """Claim KEY for this writer. Returns (the claim's etag, whether a dead writer's stale claim was taken
        over), or None when the content got a version meanwhile."""
        claim = {"claim": uuid.uuid4().hex, **_whoami()}
        deadline = time.monotonic() + STALE_CLAIM_S + 60
        while time.monotonic() < deadline:
            if self.store.put_if_absent(key, _dump(claim)):
                got = self.store.get(key)
                assert got is not None
                return got[1], False
            cur = self._read_json(key)
            if cur is None:
                continue
            data, etag = cur
            if isinstance(data.get("version"), int):
                return None
            if _stale(data, STALE_CLAIM_S) and self.store.put_if_match(key, _dump(claim), etag):
                got = self.store.get(key)
                assert got is not None
                return got[1], True
            time.sleep(0.05)
        raise ModelRegistryError(f"registry {self.uri}: timed out waiting for another writer of {key}")

    # -- markers: writers and deleters never miss each other ---------------------------------------------------
    #
    # A writer that relies on something existing (a blob it does not upload again, a version it starts using) first
    # writes its own marker, then looks for a deleter's tombstone. A deleter first writes its tombstone, then looks
    # for writers' markers and users. Whichever comes second sees the other: a blob is never deleted from under a
    # new version, and a version is never deleted under a new user.

    def _marker(self) -> bytes:
        return _dump(_whoami())

    def _live(self, key: str, max_age_s: float) -> bool:
        """Whether the marker at KEY is from a process that may still be at work."""
        rec = self._read_json(key)
        return rec is not None and not _stale(rec[0], max_age_s)

    def _hold_blobs(self, shas: list[str]) -> list[str]:
        """Mark the blobs this writer is about to reference (before it checks they exist), then wait out any
        deletion of them in progress. Returns the marker keys for :meth:`_release`."""
        token = uuid.uuid4().hex
        keys = []
        for sha in sorted(set(shas)):
            keys.append(f"blobs/pending/{sha}/{token}.json")
            self.store.put(keys[-1], self._marker())
        for sha in sorted(set(shas)):
            while self._live(f"blobs/deleting/{sha}.json", STALE_CLAIM_S):
                time.sleep(0.05)
        return keys

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            self.store.delete(key)

    def set_metadata(
        self,
        name: str,
        version: int,
        tags: dict[str, str] | None,
        description: str,
        properties: dict[str, str] | None = None,
    ) -> ModelVersion:
        """Update a version's mutable metadata (tags, description, properties) in place."""
        tags = validate_tags(tags)
        key = f"models/{name}/meta/{_vkey(version)}.json"
        new = {
            "tags": tags,
            "description": description,
            "properties": validate_tags(properties, "properties"),
        }
        cur = self._read_json(key)
        if cur is None or cur[0] != new:
            self.store.put(key, _dump(new))
        mv = self.get(name, version)
        assert mv is not None
        return mv

    # -- aliases and users ----------------------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> None:
        validate_name(alias, "alias")
        if self.get(name, version) is None:
            raise ModelError(
                f"alias {alias!r}: model {name!r} has no version {version} (has: {self.versions(name)})"
            )
        self.store.put(f"models/{name}/aliases/{alias}.json", _dump({"version": version}))

    def get_alias(self, name: str, alias: str) -> int | None:
        a = self._read_json(f"models/{name}/aliases/{alias}.json")
        return int(a[0]["version"]) if a else None

    def delete_alias(self, name: str, alias: str) -> None:
        self.store.delete(f"models/{name}/aliases/{alias}.json")

    def add_user(self, name: str, version: int, user: str, info: dict[str, Any] | None = None) -> None:
        """Record USER as using NAME:VERSION (delete_version refuses while it does). Written first, then checked: a
        version being deleted or already gone is refused (ModelError) and the record taken back."""
        user_key = hashlib.sha256(user.encode()).hexdigest()[:32]
        key = f"models/{name}/users/{_vkey(version)}/{user_key}.json"
        self.store.put(key, _dump({"user": user, **(info or {})}))
        if (
            self._live(f"models/{name}/deleting/{_vkey(version)}.json", STALE_CLAIM_S)
            or self.get(name, version) is None
        ):
            self.store.delete(key)
            raise ModelError(
                f"model {name}:{version} is being deleted (or is gone) from {self.uri}: {user} cannot use it; pick "
                "another version"
            )

    def remove_user(self, name: str, version: int, user: str) -> None:
        user_key = hashlib.sha256(user.encode()).hexdigest()[:32]
        self.store.delete(f"models/{name}/users/{_vkey(version)}/{user_key}.json")

    def users(self, name: str, version: int) -> list[str]:
        out = []
        for key in self.store.list(f"models/{name}/users/{_vkey(version)}/"):
            rec = self._read_json(key)
            if rec:
                out.append(str(rec[0].get("user")))
        return sorted(out)

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version nobody uses; refused, naming the users, otherwise. Its blobs go only if no other version
        uses them and no writer is about to (see the markers above)."""
        mv = self.get(name, version)
        if mv is None:
            return
        tomb = f"models/{name}/deleting/{_vkey(version)}.json"
        self.store.put(tomb, self._marker())  # before looking at users: a new user sees it and backs off
        try:
            users = self.users(name, version)
            if users:
                raise ModelError(
                    f"model {name}:{version} is in use by {', '.join(users)}: remove those first"
                )
            self._delete_version(name, mv)
        finally:
            self.store.delete(tomb)

    def _delete_version(self, name: str, mv: ModelVersion) -> None:
        version = mv.version
        idx = self._read_json(f"models/{name}/sha256/{mv.sha256}.json")
        if idx and idx[0].get("version") == version:
            self.store.delete(f"models/{name}/sha256/{mv.sha256}.json")
        for key in self.store.list(f"models/{name}/aliases/"):
            a = self._read_json(key)
            if a and a[0].get("version") == version:
                self.store.delete(key)
        self.store.delete(f"models/{name}/meta/{_vkey(version)}.json")
        self.store.delete(f"models/{name}/versions/{_vkey(version)}.json")
        shas = sorted({f["sha256"] for f in mv.files})
        tombs = [f"blobs/deleting/{sha}.json" for sha in shas]
        for tomb in tombs:  # before looking for users of the blobs: a new writer sees them and waits
            self.store.put(tomb, self._marker())
        try:
            still_used = {
                f["sha256"]
                for n in self.names()
                for v in self.versions(n)
                if (g := self.get(n, v))
                for f in g.files
            }
            for sha in shas:
                pending = any(
                    self._live(k, STALE_PENDING_S) for k in self.store.list(f"blobs/pending/{sha}/")
                )
                if sha not in still_used and not pending:
                    self.store.delete(f"blobs/sha256/{sha}")
        finally:
            for tomb in tombs:
                self.store.delete(tomb)

    # -- copying across registries -----------------------------------------------------------------------------

    def copy_version(self, source: ModelRegistry, name: str, version: int, sha256: str) -> ModelVersion:
        """Copy NAME:VERSION from SOURCE into this registry under the same version number (promotion keeps exact
        versions). Every file is streamed through a sha256 check before it is stored; the record is written only
        if the number is free here. An existing identical version is left as is."""
        mv = source.get(name, version)
        if mv is None or mv.sha256 != sha256:
            raise ModelError(f"{name}:{version} with sha256 {sha256[:12]}… is not in {source.uri}")
        self._ready()
        have = self.get(name, version)
        if have is not None:
            if have.sha256 != sha256:
                raise ModelError(f"{self.uri} already has {name}:{version} with other content: not copied")
            self.copy_signatures(source, name, version)  # a signer added since the last promotion
            return have
        other = self.find_by_content(name, sha256)
        if other is not None:
            raise ModelError(
                f"{self.uri} already has this content as {name}:{other}: pin {name}:{other} there instead"
            )
        with tempfile.TemporaryDirectory(prefix="mlinfra-copy-") as tmp:
            for entry in mv.files:
                key = f"blobs/sha256/{entry['sha256']}"
                if self.store.exists(key):
                    continue
                part = Path(tmp) / entry["sha256"]
                h = hashlib.sha256()
                with open(part, "wb") as out:
                    for chunk in source.iter_file(entry):
                        h.update(chunk)
                        out.write(chunk)
                if h.hexdigest() != entry["sha256"]:
                    raise ContentMismatch(
                        f"{name}:{version} file {entry['path']} in {source.uri} does not match its sha256: not copied"
                    )
                self.store.upload_file(key, part, entry["sha256"])
                part.unlink()
        record = {
            "name": name,
            "sha256": mv.sha256,
            "size_bytes": mv.size_bytes,
            "framework": mv.framework,
            "files": mv.files,
            "signature": mv.signature,
            "properties": mv.properties,
            "is_dir": mv.is_dir,
            "created_at": mv.created_at,
            "copied_from": f"{source.uri}#models/{name}/versions/{version}",
            "format": 1,
            "version": version,
        }
        if not self.store.put_if_absent(f"models/{name}/versions/{_vkey(version)}.json", _dump(record)):
            raise ModelError(f"{self.uri} took {name}:{version} meanwhile: not copied")
        self.store.put(
            f"models/{name}/meta/{_vkey(version)}.json",
            _dump({"tags": mv.tags, "description": mv.description, "properties": mv.properties}),
        )
        self.store.put(f"models/{name}/sha256/{sha256}.json", _dump({"version": version}))
        self.copy_signatures(source, name, version)
        got = self.get(name, version)
        assert got is not None
        return got

    def copy_signatures(self, source: ModelRegistry, name: str, version: int) -> int:
        """Bring NAME:VERSION's signature bundles from SOURCE (docs/provenance.md): the signed statement names every
        file's sha256, which a copy keeps, so the bundles verify here too. Returns how many were copied."""
        prefix = signatures_prefix(name, version)
        copied = 0
        for key in source.store.list(prefix):
            got = source.store.get(key)
            if got is not None and not self.store.exists(key):
                self.store.put(key, got[0])
                copied += 1
        return copied

    # -- drift: what a stack declared against what the registry holds ---------------------------------------------

    def check_version(self, name: str, version: int) -> str:
        """``"present"`` when version VERSION of NAME has its record and every file's bytes at their recorded size;
        else what is wrong, in a phrase (``"file model.onnx missing"``, ``"version record missing"``)."""
        mv = self.get(name, version)
        if mv is None:
            return "version record missing"
        problems = []
        for f in mv.files:
            size = self.store.size(f"blobs/sha256/{f['sha256']}")
            if size is None:
                problems.append(f"file {f['path']} missing")
            elif size != int(f["size"]):
                problems.append(f"file {f['path']} has {size} of {f['size']} bytes")
        return "; ".join(problems) or "present"

    def restore_files(self, name: str, version: int, path: Path | str | None) -> list[str]:
        """Upload again the files of version VERSION whose bytes are missing or damaged, from PATH (the file or
        folder the version was registered from), each only if its sha256 is the recorded one; returns the files
        restored. A version whose bytes are gone from storage and from PATH can't be recreated identically: a
        ModelError says so and what to do."""
        mv = self.get(name, version)
        if mv is None:
            raise ModelError(
                f"version {version} of {name!r} was deleted from {self.uri} outside Pulumi; versions are immutable "
                "and its number is not reused: register the content again as a new version (change the model's "
                "path or content), or `pulumi state delete` the resource and import the version you want"
            )
        restored = []
        for f in mv.files:
            key = f"blobs/sha256/{f['sha256']}"
            if self.store.size(key) == int(f["size"]):
                continue
            if path is None:
                raise ModelError(
                    f"version {version} of {name!r} lost the bytes of {f['path']} from {self.uri}, and the stack pins "
                    "the version without a path to restore them from: copy the version back from another registry "
                    "(`mlinfra gitops promote` / ModelRegistry.copy_version) or register the file as a new version"
                )
            src = Path(path) / f["path"] if mv.is_dir else Path(path)
            if not src.is_file() or src.stat().st_size != int(f["size"]) or sha256_file(src) != f["sha256"]:
                raise ModelError(
                    f"version {version} of {name!r} lost the bytes of {f['path']} from {self.uri}, and {src} no "
                    f"longer holds them (sha256 {f['sha256'][:12]}…): put the original file back at {src} and run "
                    "`pulumi up` again, or register the current file as a new version — a different file is never "
                    "stored under an existing version"
                )
            self.store.delete(key)  # a damaged object; upload_file writes a fresh one
            self.store.upload_file(key, src, f["sha256"])
            restored.append(f["path"])
        return restored

    # -- downloading ----------------------------------------------------------------------------------------------

    def iter_file(self, entry: dict[str, Any]) -> Iterator[bytes]:
        yield from self.store.open_read(f"blobs/sha256/{entry['sha256']}")

    def download(self, ref: str, dest: Path | str, progress: Progress | None = None) -> Path:
        """Download a version to DEST (a file path, or a folder), verifying every file's sha256."""
        mv = self.resolve(ref)
        dest = Path(dest)
        if mv.is_dir:
            root = dest
            targets = [(f, root / f["path"]) for f in mv.files]
        else:
            target = dest / mv.files[0]["path"] if dest.is_dir() else dest
            root = target.parent
            targets = [(mv.files[0], target)]
        done = 0
        for entry, target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
            h = hashlib.sha256()
            try:
                with open(tmp, "wb") as out:
                    for chunk in self.iter_file(entry):
                        h.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, mv.size_bytes)
                if h.hexdigest() != entry["sha256"]:
                    raise ContentMismatch(
                        f"{mv.name}:{mv.version} file {entry['path']} in {self.uri} does not match its sha256 "
                        f"(expected {entry['sha256'][:12]}…, got {h.hexdigest()[:12]}…): the stored bytes are corrupt"
                    )
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return root if mv.is_dir else targets[0][1]
