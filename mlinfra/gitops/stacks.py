"""Running a platform project's stacks for GitOps: which stacks exist, their typed config, previews with the
policy pack (Automation API), and promotion of exact artifacts from one stack to the next.

A project folder holds Pulumi.yaml, the program and one Pulumi.<stack>.yaml per environment. A stack "exists" when
its file does or the backend has it; a stack with a file but no backend state yet is created on first use (the
repository, not the backend, is the source of truth).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from mlinfra import defaults
from mlinfra.automation import local_stack, pulumi_command
from mlinfra.engine import engine_env
from mlinfra.errors import GitOpsError
from mlinfra.files import write_atomic
from mlinfra.gitops import plan
from mlinfra.gitops.config import (
    PlatformConfig,
    PolicyConfig,
    StackConfigError,
    image_repository,
    load,
    load_policy,
    policy_pack_config,
    registry_uri,
)
from mlinfra.pins import KEY as PINS_KEY

POLICY_PACK = Path(__file__).resolve().parent.parent / "policy"
CONFIG_KEY = "platform"
PINS_CONFIG = f"mlinfra:{PINS_KEY}"
"""Any program's pins (mlinfra.pins), written by promotion."""
POLICY_KEY = "mlinfra:policy"
"""Any stack's switch for the policy pack: a config object with the keys of the platform config's ``policy``."""


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: far faster on a big config


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a safe loader (C or pure Python)


def policy_python() -> Path:
    """The policy pack's interpreter: the virtualenv its PulumiPolicy.yaml names (its own: pulumi-policy pins
    protobuf 5, onnx needs 6)."""
    meta = _yaml((POLICY_PACK / "PulumiPolicy.yaml").read_text())
    return (POLICY_PACK / meta["runtime"]["options"]["virtualenv"]).resolve() / "bin" / "python"


class Project:
    def __init__(self, folder: Path | str, backend_dir: Path | str | None = None):
        self.dir = Path(folder).resolve()
        meta = self.dir / "Pulumi.yaml"
        if not meta.is_file():
            raise GitOpsError(f"{self.dir} has no Pulumi.yaml: pass --dir with the platform project's folder")
        self.name = str(_yaml(meta.read_text())["name"])
        self.backend_dir = backend_dir
        self.env = engine_env(backend_dir)
        self._ws: auto.LocalWorkspace | None = None
        self._configs: dict[str, PlatformConfig] = {}
        self._policies: dict[str, PolicyConfig | None] = {}

    @property
    def ws(self) -> auto.LocalWorkspace:
        if self._ws is None:
            self._ws = auto.LocalWorkspace(
                work_dir=str(self.dir),
                env_vars=self.env,
                pulumi_home=self.env["PULUMI_HOME"],
                pulumi_command=pulumi_command(),
            )
        return self._ws

    def files(self) -> dict[str, Path]:
        return {p.name[len("Pulumi.") : -len(".yaml")]: p for p in sorted(self.dir.glob("Pulumi.*.yaml"))}

    def known(self) -> list[str]:
        names = set(self.files())
        names |= {s.name.split("/")[-1] for s in self.ws.list_stacks()}
        return sorted(names)

    def check_stack(self, stack: str) -> None:
        if stack in self.files():
            return
        known = self.known()  # asks the backend
        if stack not in known:
            near = difflib.get_close_matches(stack, known, n=1)
            raise GitOpsError(
                f"unknown stack {stack!r} in {self.dir}: stacks are {', '.join(known) or '(none)'}"
                + (f"; did you mean {near[0]!r}?" if near else "")
                + f" (a stack is declared by its Pulumi.{stack}.yaml)"
            )

    def stack(self, stack: str) -> auto.Stack:
        """STACK, created on the backend on first use. Creating it makes the engine rewrite Pulumi.<stack>.yaml
        (adding e.g. ``encryptionsalt``) and drop its comments: the file is put back as written, with only the
        engine's new top-level keys added."""
        self.check_stack(stack)
        path = self.files().get(stack)
        before = path.read_text() if path else None
        st = local_stack(self.dir, stack, self.backend_dir)
        if path is not None and before is not None:
            _keep_layout(path, before)
        return st

    def config(self, stack: str) -> PlatformConfig:
        """The stack's validated platform config (read once per Project; promotion makes a new Project)."""
        if stack not in self._configs:
            self._configs[stack] = self._load_config(stack)
        return self._configs[stack]

    def has_platform(self, stack: str) -> bool:
        """Whether the stack's config holds the typed platform object (the bundled `stacks/` project's way)."""
        return self._raw_key(stack, f"{self.name}:{CONFIG_KEY}") is not None

    def policy(self, stack: str) -> PolicyConfig | None:
        """The policy pack's settings for STACK, validated: the platform object's ``policy`` section, else the
        ``mlinfra:policy`` config object any program's stack can set (same keys); None: the pack is off."""
        if self.has_platform(stack):
            return self.config(stack).policy
        if stack not in self._policies:  # read once per Project, like config()
            raw = self._raw_key(stack, POLICY_KEY)
            try:
                self._policies[stack] = None if raw is None else load_policy(raw)
            except StackConfigError as e:
                raise GitOpsError(f"Pulumi.{stack}.yaml: {e}") from None
        return self._policies[stack]

    def _raw_key(self, stack: str, key: str) -> Any:
        """KEY of the config in Pulumi.<STACK>.yaml (None without that file or key)."""
        path = self.files().get(stack)
        doc = (_yaml(path.read_text()) or {}) if path else {}
        return (doc.get("config") or {}).get(key)

    def _load_config(self, stack: str) -> PlatformConfig:
        key = f"{self.name}:{CONFIG_KEY}"
        raw = self._raw_key(stack, key)
        if raw is None:
            raise GitOpsError(f"Pulumi.{stack}.yaml has no config key {key!r}: add the platform object there")
        try:
            return load(raw)
        except StackConfigError as e:
            raise GitOpsError(f"Pulumi.{stack}.yaml: {e}") from None


def _keep_layout(path: Path, before: str) -> None:
    """Undo the engine's re-serialization of PATH (it was BEFORE): when the only change is new top-level keys, write
    BEFORE with those keys' lines added after its leading comments."""
    after = path.read_text()
    if after == before:
        return
    old, new = _yaml(before) or {}, _yaml(after) or {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    added = {k: v for k, v in new.items() if k not in old}
    kept = {k: v for k, v in old.items() if v not in ({}, None)}  # the engine drops an empty `config: {}`
    if {k: v for k, v in new.items() if k in old} != kept or not all(
        isinstance(v, str | int | float | bool) for v in added.values()
    ):
        return
    lines = before.splitlines(keepends=True)
    head = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    keys = [f"{k}: {_scalar(v)}\n" for k, v in added.items()]
    text = "".join(lines[:head] + keys + lines[head:])
    if {k: v for k, v in (_yaml(text) or {}).items() if v not in ({}, None)} == new:
        write_atomic(path, text)


# -- preview --------------------------------------------------------------------------------------------------------


def preview(
    project: Project,
    stack_name: str,
    events_file: Path | None = None,
    progress: Callable[[str], None] | None = None,
    refresh: bool = False,
) -> plan.Summary:
    """`pulumi preview` of STACK through the Automation API, with the policy pack when the stack enables it
    (:meth:`Project.policy`), summarized in model terms from the mlinfra components the plan holds — any program's,
    not only the platform project's. With REFRESH, every resource is read from the real world first (`pulumi
    preview --refresh`): what changed outside Pulumi shows as drift (the state file is not written)."""
    project.check_stack(stack_name)
    project.policy(stack_name)  # validates the config before the engine runs
    return _preview(project, project.stack(stack_name), events_file, progress, refresh)


def _preview(
    project: Project,
    stack: auto.Stack,
    events_file: Path | None = None,
    progress: Callable[[str], None] | None = None,
    refresh: bool = False,
) -> plan.Summary:
    records: list[dict[str, Any]] = []

    def on_event(event: auto.EngineEvent) -> None:
        r = plan.record(event)
        if r is None:
            return
        records.append(r)
        if progress and r["kind"] == "step" and r["op"] != "same" and r["type"] != "pulumi:pulumi:Stack":
            progress(f"  {r['op']:8s} {r['type']} {plan._name(r['urn'])}")

    kwargs: dict[str, Any] = {"on_event": on_event, "diff": False, "refresh": refresh}
    with tempfile.TemporaryDirectory(prefix="mlinfra-policy-") as tmp:
        kwargs.update(_policy_args(project.policy(stack.name), stack.name, Path(tmp)))
        failure = None
        try:
            stack.preview(**kwargs)
        except auto.CommandError as e:
            failure = e
    if events_file is not None:
        events_file.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    summary = plan.summarize(records, stack.name, project.name)
    if failure is not None and not summary.errors and not summary.blocking:
        summary.errors.append(_failure_text(failure))
    pins = project._raw_key(stack.name, PINS_CONFIG)
    if isinstance(pins, dict) and not summary.errors:
        have = sorted({m.name for m in summary.models} | {i.name for i in summary.images})
        unknown = sorted(set(pins) - set(have))
        if unknown:
            summary.errors.append(
                f"{PINS_CONFIG} names {', '.join(unknown)}, which the program does not declare (its models and "
                f"images: {', '.join(have) or 'none'}): remove the pin or fix its name"
            )
    return summary


def _policy_args(policy: PolicyConfig | None, stack_name: str, tmp: Path) -> dict[str, Any]:
    """The Automation API arguments that enable the policy pack as the stack's config says (none when off)."""
    if policy is None:
        return {}
    if not policy_python().exists():
        raise GitOpsError(
            f"stack {stack_name} enables the policy pack, but its virtualenv {policy_python().parent.parent} is "
            "missing: run `make setup`"
        )
    pack_cfg = tmp / "policy.json"
    pack_cfg.write_text(json.dumps(policy_pack_config(policy)))
    return {"policy_packs": [str(POLICY_PACK)], "policy_pack_configs": [str(pack_cfg)]}


def up(
    project: Project, stack_name: str, say: Callable[[str], None] = print, refresh: bool = False
) -> auto.UpResult:
    """`pulumi up` of STACK, engine output streamed to SAY, with the stack's policy pack enforced. The engine's
    `up` does not preview first (Automation API), so this previews first and refuses a plan the policies block.
    With REFRESH, the real world is read first, so drift is repaired (`pulumi up --refresh`)."""
    policy = project.policy(stack_name)
    stack = project.stack(stack_name)
    summary = _preview(project, stack, refresh=refresh)
    if summary.blocking or summary.errors:
        raise GitOpsError(
            f"not applying {stack_name}: "
            + "; ".join([f"{v.policy}: {v.message}" for v in summary.blocking] + summary.errors)
        )
    with tempfile.TemporaryDirectory(prefix="mlinfra-policy-") as tmp:
        try:
            return stack.up(
                on_output=lambda line: say(line.rstrip("\n")),
                refresh=refresh,
                **_policy_args(policy, stack_name, Path(tmp)),
            )
        except auto.CommandError as e:
            raise GitOpsError(f"`pulumi up` of {stack_name} failed: {_failure_text(e)}") from None


def _failure_text(e: auto.CommandError) -> str:
    text = str(getattr(e, "stderr", "") or e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("code:")]
    return " ".join(lines[-3:])[:600] or "the engine failed"


def load_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- promotion ------------------------------------------------------------------------------------------------------


def promote(
    project: Project,
    source: str,
    target: str,
    models: list[str] | None = None,
    copy: bool = False,
    write: bool = True,
    say: Callable[[str], None] = print,
) -> str:
    """Pin in TARGET's ``mlinfra:pins`` (mlinfra.pins) the exact version and sha256 of each RegisteredModel and the
    digest of each ScoringImage SOURCE runs, keyed by resource name; with MODELS, only those models and the images
    that package them (an image moves with all of its models). Returns the unified diff of Pulumi.<target>.yaml
    (written unless write=False; only the pins block changes, comments and layout stay).

    Refuses when SOURCE's last update did not succeed or it runs nothing of mlinfra's, and when an artifact is not
    in TARGET's registries — those its platform config names, or else those its program declares (read from a
    preview of it without its pins) — unless COPY, which copies them there by content (sha256 and digest
    verified)."""
    if source == target:
        raise GitOpsError(f"--from and --to are both {source!r}: promote between two stacks")
    project.check_stack(source)
    project.check_stack(target)
    tcfg = project.config(target) if project.has_platform(target) else None
    path = project.files().get(target)
    if path is None:
        raise GitOpsError(f"stack {target!r} has no Pulumi.{target}.yaml to write its pins into: create it")
    src = _deployed(_succeeded(project, source))
    if not src.models and not src.images:
        raise GitOpsError(f"stack {source!r} runs no RegisteredModel or ScoringImage: nothing to promote")
    dst = _destinations(project, target, tcfg)
    if dst.unknown is not None:
        raise GitOpsError(
            f"cannot tell which models and images stack {target!r} declares, nor where it keeps them: a preview of "
            f"its program without its pins failed ({dst.unknown}); fix that first"
        )
    pins = _selected(src, source, target, models, dst, tcfg)

    from mlinfra.images.builder import copy_image, inspect_image
    from mlinfra.registry import ModelRegistry

    copies: list[tuple[str, Callable[[], object]]] = []  # checked all first: a refusal copies nothing
    for name, pin in sorted(pins.items()):
        if "image" in pin:
            ref, repo = pin["image"], dst.images[name]
            pin["image"] = f"{repo}@{ref.split('@', 1)[1]}"
            if inspect_image(pin["image"]) is None:
                if not copy:
                    raise GitOpsError(
                        f"image {name} ({pin['image'].split('@', 1)[1][:19]}…) is not in {target}'s repository "
                        f"{repo}: re-run with --copy to copy it there (verified by digest)"
                    )
                copies.append((f"copying image {ref} → {repo}", functools.partial(copy_image, ref, repo)))
            continue
        uri, src_uri = dst.models[name], src.models[name]["registry"]
        if uri == src_uri:
            continue
        version, sha, model_name = pin["version"], pin["sha256"], src.models[name]["model_name"]
        registry = ModelRegistry(uri)
        found = registry.get(model_name, version)
        if found is not None and found.sha256 != sha:
            raise GitOpsError(
                f"{name}:{version} in {uri} has sha256 {found.sha256[:12]}…, not {sha[:12]}… as in {source}: the "
                "registries disagree on that version; promote into a registry that has no other content under it"
            )
        if found is None:
            if not copy:
                raise GitOpsError(
                    f"{name}:{version} (sha256 {sha[:12]}…) is not in {target}'s registry {uri}: re-run with "
                    "--copy to copy it there (verified by sha256)"
                )
            copy_model = functools.partial(
                registry.copy_version, ModelRegistry(src_uri), model_name, version, sha
            )
            copies.append((f"copying model {name}:{version} into {uri}", copy_model))
    for what, do in copies:
        say(what)
        do()

    before = path.read_text()
    old = dict(((_yaml(before) or {}).get("config") or {}).get(PINS_CONFIG) or {})
    merged = {**old, **pins}
    if merged == old:
        return ""
    after = _with_pins(before, merged)
    diff = _file_diff(path.name, before, after)
    for n, pin in sorted(pins.items()):
        if old.get(n) != pin:
            say(f"pinning {n}: " + ", ".join(f"{k} {v}" for k, v in pin.items()))
    if write:
        write_atomic(path, after)  # a crash or a full disk never leaves half a stack config
    return diff


@dataclasses.dataclass
class _Deployed:
    """What a stack's state says it runs, by resource name."""

    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """{version, sha256, registry, model_name}"""
    images: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """{image_ref, models: resource names of the RegisteredModels it packages}"""


def _deployed(stack: auto.Stack) -> _Deployed:
    found = _Deployed()
    resources = (stack.export_stack().deployment or {}).get("resources") or []
    by_model_name: dict[str, str] = {}
    for r in resources:
        outs = r.get("outputs") or {}
        if r.get("type") == "mlinfra:registry:RegisteredModel" and outs.get("version") is not None:
            name = str(r.get("urn", "")).rsplit("::", 1)[-1]
            model_name = str(outs.get("model_name") or name)
            found.models[name] = {
                "version": int(outs["version"]),
                "sha256": str(outs["sha256"]),
                "registry": str(outs.get("registry") or ""),
                "model_name": model_name,
            }
            by_model_name[model_name] = name
    for r in resources:
        outs = r.get("outputs") or {}
        ref = str(outs.get("image_ref") or "")
        if r.get("type") == "mlinfra:images:ScoringImage" and "@sha256:" in ref:
            packaged = {str(m.get("name")) for m in outs.get("models") or [] if isinstance(m, dict)}
            found.images[str(r.get("urn", "")).rsplit("::", 1)[-1]] = {
                "image_ref": ref,
                "models": {by_model_name.get(m, m) for m in packaged},
            }
    return found


def _selected(
    src: _Deployed,
    source: str,
    target: str,
    models: list[str] | None,
    dst: _Destinations,
    tcfg: PlatformConfig | None,
) -> dict[str, dict[str, Any]]:
    """The pins to write: every model and image SOURCE runs that TARGET declares too, or with MODELS those models and
    every image that packages one of them, with all of that image's models."""
    declared = (set(dst.models), set(dst.images))
    for m in models or []:
        if m not in src.models or m not in declared[0]:
            where, have = (source, src.models) if m not in src.models else (target, declared[0])
            near = difflib.get_close_matches(m, sorted(have), n=1)
            raise GitOpsError(
                f"--model {m!r}: stack {where!r} has no model of that name (it has {', '.join(sorted(have)) or 'none'})"
                + (f"; did you mean {near[0]!r}?" if near else "")
            )
    wanted = set(models or (set(src.models) & declared[0]))
    images = {
        n: i for n, i in src.images.items() if n in declared[1] and (not models or i["models"] & wanted)
    }
    if tcfg:  # the target's config says which models each image packages: the source must run all of them
        for ic in tcfg.images:
            if not wanted & set(ic.models):
                continue
            if ic.name not in src.images:
                raise GitOpsError(
                    f"image {ic.name!r} is in {target}'s config but stack {source!r} does not build it"
                )
            missing = sorted(set(ic.models) - set(src.models))
            if missing:
                raise GitOpsError(
                    f"image {ic.name!r} packages {', '.join(missing)} in {target}'s config, which stack {source!r} "
                    "does not run: the image and its models move together"
                )
    for i in images.values():
        wanted |= i["models"] & set(src.models)  # an image moves with its models
    if not wanted and not images:
        raise GitOpsError(f"stacks {source!r} and {target!r} share no model: nothing to promote")
    pins: dict[str, dict[str, Any]] = {
        n: {"version": src.models[n]["version"], "sha256": src.models[n]["sha256"]} for n in sorted(wanted)
    }
    pins.update({n: {"image": i["image_ref"]} for n, i in sorted(images.items())})
    return pins


@dataclasses.dataclass
class _Destinations:
    models: dict[str, str]
    """resource name → the model registry's URI"""
    images: dict[str, str]
    """resource name → host/repository"""
    unknown: str | None = None
    """why they are not known (the target's program failed to preview)"""


def _destinations(project: Project, target: str, tcfg: PlatformConfig | None) -> _Destinations:
    """Where TARGET keeps its models and images: its platform config's registry and image repositories, or else
    the registry and repository inputs of its program's RegisteredModels and ScoringImages, read from a preview of
    TARGET with its current pins left out (nothing is registered, built or deployed)."""
    if tcfg is not None:
        uri = registry_uri(tcfg, project.dir)
        return _Destinations(
            {m.name: uri for m in tcfg.models},
            {i.name: image_repository(tcfg, i.name, defaults.registry_host()) for i in tcfg.images},
        )
    path = project.files()[target]
    records: list[dict[str, Any]] = []

    def on_event(event: auto.EngineEvent) -> None:
        r = plan.record(event)
        if r is not None and r["kind"] == "step":
            records.append(r)

    with tempfile.TemporaryDirectory(prefix="mlinfra-promote-") as tmp:
        unpinned = Path(tmp) / path.name
        unpinned.write_text(_with_pins(path.read_text(), {}))
        try:
            project.stack(target).preview(on_event=on_event, diff=False, config_file=str(unpinned))
        except auto.CommandError as e:
            return _Destinations({}, {}, _failure_text(e))
    found = _Destinations({}, {})
    for r in records:
        inputs, name = plan._inputs(r, "new"), plan._name(r["urn"])
        if r["type"] == "mlinfra:registry:RegisteredModel" and inputs.get("registry"):
            found.models[name] = str(inputs["registry"])
        elif r["type"] == "mlinfra:images:ScoringImage" and inputs.get("repository"):
            found.images[name] = str(inputs["repository"])
    return found


def _succeeded(project: Project, source: str) -> auto.Stack:
    """SOURCE's stack, refused unless its last update succeeded (a failed, destroyed or empty stack has nothing
    trustworthy to promote)."""
    src = project.stack(source)
    history = src.history(page_size=1)
    if not history:
        raise GitOpsError(
            f"stack {source!r} has no deployments: run `pulumi up` on {source} before promoting from it"
        )
    last = history[0]
    if last.kind == "destroy":
        raise GitOpsError(
            f"stack {source!r} was destroyed (#{last.version}): it has no deployments to promote"
        )
    if last.result != "succeeded":
        raise GitOpsError(
            f"the last {last.kind} of stack {source!r} (#{last.version}, {last.start_time}) ended "
            f"{last.result!r}: fix {source} and `pulumi up` it successfully before promoting from it"
        )
    return src


def _file_diff(name: str, before: str, after: str) -> str:
    """The unified diff promotion shows (and prints) for Pulumi.<stack>.yaml."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{name}", f"b/{name}"
    )
    return "".join(lines)


def _with_pins(text: str, pins: dict[str, dict[str, Any]]) -> str:
    """TEXT (a Pulumi.<stack>.yaml) with its ``mlinfra:pins`` block replaced by PINS; every other line (comments,
    layout, other keys) kept."""
    out: list[str] = []
    skipping = False
    config_at = None
    for line in text.splitlines(keepends=True):
        if skipping:
            if line.strip() and _indent(line) <= 2:
                skipping = False
            else:
                continue
        if line.startswith("config:"):
            config_at = len(out)
        if line.startswith(f"  {PINS_CONFIG}:"):
            skipping = True
            continue
        out.append(line)
    if not pins:
        return "".join(out)
    block = [f"  {PINS_CONFIG}:\n"] + [
        f"    {n}: {{{', '.join(f'{k}: {_scalar(v)}' for k, v in pin.items())}}}\n"
        for n, pin in sorted(pins.items())
    ]
    if config_at is None:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        return "".join(out) + "config:\n" + "".join(block)
    if out[config_at].split("#", 1)[0].strip() != "config:":  # `config: {}`
        out[config_at] = "config:\n"
    return "".join(out[: config_at + 1] + block + out[config_at + 1 :])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
