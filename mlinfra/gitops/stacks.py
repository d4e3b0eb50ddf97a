"""Running a platform project's stacks for GitOps: which stacks exist, their typed config, previews with the
policy pack (Automation API), and promotion of exact artifacts from one stack to the next.

A project folder holds Pulumi.yaml, the program and one Pulumi.<stack>.yaml per environment. A stack "exists" when
its file does or the backend has it; a stack with a file but no backend state yet is created on first use (the
repository, not the backend, is the source of truth).
"""

from __future__ import annotations

import difflib
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
        self.check_stack(stack)
        return local_stack(self.dir, stack, self.backend_dir)

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
    """Pin in TARGET's config the exact model versions (and sha256) and image digests SOURCE runs. Returns the
    unified diff of Pulumi.<target>.yaml (written unless write=False). Refuses when SOURCE's last update did not
    succeed, has no deployment, or an artifact is missing from TARGET's registries (copy=True copies them by
    content, verifying sha256)."""
    if source == target:
        raise GitOpsError(f"--from and --to are both {source!r}: promote between two stacks")
    project.check_stack(source)
    project.check_stack(target)
    if not project.has_platform(target):
        return _promote_pins(project, source, target, models, copy, write, say)
    tcfg = project.config(target)
    src = _succeeded(project, source)
    outputs = src.outputs()
    state = outputs.get("mlinfra")
    if state is None or not isinstance(state.value, dict) or not state.value.get("models"):
        raise GitOpsError(
            f"stack {source!r} exports no deployed models (output 'mlinfra'): nothing to promote"
        )
    deployed: dict[str, Any] = state.value
    src_models: dict[str, Any] = deployed["models"]
    src_images: dict[str, Any] = deployed.get("images") or {}
    target_models = {m.name for m in tcfg.models}
    wanted = set(models or [m for m in src_models if m in target_models])
    for m in sorted(wanted):
        if m not in src_models or m not in target_models:
            where = source if m not in src_models else target
            have = sorted(src_models if m not in src_models else target_models)
            near = difflib.get_close_matches(m, have, n=1)
            raise GitOpsError(
                f"--model {m!r}: stack {where!r} has no model of that name (it has {', '.join(have)})"
                + (f"; did you mean {near[0]!r}?" if near else "")
            )
    # An image moves with its models: pin every image that packages a promoted model (and all of its models).
    images = [i for i in tcfg.images if wanted & set(i.models)]
    for i in images:
        if i.name not in src_images:
            raise GitOpsError(
                f"image {i.name!r} is in {target}'s config but stack {source!r} does not build it"
            )
        missing = sorted(set(i.models) - set(src_models))
        if missing:
            raise GitOpsError(
                f"image {i.name!r} packages {', '.join(missing)} in {target}'s config, which stack {source!r} does "
                "not run: the image and its models move together"
            )
        wanted |= set(i.models)
    if not wanted:
        raise GitOpsError(f"stacks {source!r} and {target!r} share no model: nothing to promote")

    from mlinfra.images.builder import copy_image, inspect_image
    from mlinfra.registry import ModelRegistry

    src_registry = ModelRegistry(str(deployed["registry"]))
    dst_uri = registry_uri(tcfg, project.dir)
    dst_registry = ModelRegistry(dst_uri)
    pins: dict[str, dict[str, Any]] = {}
    for name in sorted(wanted):
        version, sha = int(src_models[name]["version"]), str(src_models[name]["sha256"])
        found = dst_registry.get(name, version)
        if found is not None and found.sha256 != sha:
            raise GitOpsError(
                f"{name}:{version} in {dst_uri} has sha256 {found.sha256[:12]}…, not {sha[:12]}… as in {source}: the "
                "registries disagree on that version; promote into a registry that has no other content under it"
            )
        if found is None:
            if not copy:
                raise GitOpsError(
                    f"{name}:{version} (sha256 {sha[:12]}…) is not in {target}'s registry {dst_uri}: re-run with "
                    "--copy to copy it there (verified by sha256)"
                )
            say(f"copying model {name}:{version} into {dst_uri}")
            dst_registry.copy_version(src_registry, name, version, sha)
        pins[name] = {"version": version, "sha256": sha}
    image_pins: dict[str, str] = {}
    for i in images:
        ref = str(src_images[i.name]["image_ref"])
        repo = image_repository(tcfg, i.name, defaults.registry_host())
        digest = ref.split("@", 1)[1]
        dst_ref = f"{repo}@{digest}"
        if inspect_image(dst_ref) is None:
            if not copy:
                raise GitOpsError(
                    f"image {i.name} ({digest[:19]}…) is not in {target}'s repository {repo}: re-run with --copy to "
                    "copy it there (verified by digest)"
                )
            say(f"copying image {ref} → {repo}")
            dst_ref = copy_image(ref, repo)
        image_pins[i.name] = dst_ref

    path = project.files()[target]
    before = path.read_text()
    doc = _yaml(before)
    platform = doc["config"][f"{project.name}:{CONFIG_KEY}"]
    for m in platform["models"]:
        if m["name"] in pins:
            for k in ("path", "tags", "properties"):
                m.pop(k, None)
            m.update(pins[m["name"]])
    for i in platform.get("images") or []:
        if i["name"] in image_pins:
            i["pinned"] = image_pins[i["name"]]
    load(platform)  # the result must still be valid
    after = _edit_yaml(before, pins, image_pins)
    if _yaml(after) != doc:  # a layout the line editor does not know: write it whole
        header = "".join(ln for ln in before.splitlines(keepends=True) if ln.startswith("#"))
        after = header + yaml.safe_dump(doc, sort_keys=False, width=120)
    diff = _file_diff(path.name, before, after)
    if write and diff:
        write_atomic(path, after)  # a crash or a full disk never leaves half a stack config
    return diff


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


def _promote_pins(
    project: Project,
    source: str,
    target: str,
    models: list[str] | None,
    copy: bool,
    write: bool,
    say: Callable[[str], None],
) -> str:
    """Promotion on any program (no platform object): TARGET's ``mlinfra:pins`` (mlinfra.pins) get the exact
    version and sha256 of each RegisteredModel and the digest of each ScoringImage SOURCE runs, keyed by resource
    name; with --model, only those models and the images that package them. The registries are the program's own:
    TARGET's preview fails, naming the pin, unless they hold those artifacts."""
    if copy:
        raise GitOpsError(
            f"--copy copies into the registries a platform config names; {target} pins artifacts for its program "
            "(mlinfra:pins), which reads them from the registries it declares: copy them there, then promote "
            "without --copy"
        )
    src = _succeeded(project, source)
    found_models: dict[str, dict[str, Any]] = {}
    model_names: dict[str, str] = {}
    images: dict[str, tuple[str, set[str]]] = {}
    for r in (src.export_stack().deployment or {}).get("resources") or []:
        name, outs = str(r.get("urn", "")).rsplit("::", 1)[-1], r.get("outputs") or {}
        if r.get("type") == "mlinfra:registry:RegisteredModel" and outs.get("version") is not None:
            found_models[name] = {"version": int(outs["version"]), "sha256": str(outs["sha256"])}
            model_names[str(outs.get("model_name") or name)] = name
        elif r.get("type") == "mlinfra:images:ScoringImage" and "@sha256:" in str(
            outs.get("image_ref") or ""
        ):
            packaged = {str(m.get("name")) for m in outs.get("models") or [] if isinstance(m, dict)}
            images[name] = (str(outs["image_ref"]), packaged)
    if not found_models and not images:
        raise GitOpsError(f"stack {source!r} runs no RegisteredModel or ScoringImage: nothing to promote")
    for m in models or []:
        if m not in found_models:
            near = difflib.get_close_matches(m, sorted(found_models), n=1)
            raise GitOpsError(
                f"--model {m!r}: stack {source!r} has no RegisteredModel of that name (it has "
                f"{', '.join(sorted(found_models)) or 'none'})"
                + (f"; did you mean {near[0]!r}?" if near else "")
            )
    pins = {n: v for n, v in found_models.items() if not models or n in models}
    for n, (ref, packaged) in images.items():
        resources = {model_names.get(m, m) for m in packaged}
        if models and not resources & set(models):
            continue
        pins[n] = {"image": ref}
        pins.update(
            {m: found_models[m] for m in resources if m in found_models}
        )  # an image moves with its models
    path = project.files().get(target)
    if path is None:
        raise GitOpsError(f"stack {target!r} has no Pulumi.{target}.yaml to write its pins into: create it")
    before = path.read_text()
    old = dict(((_yaml(before) or {}).get("config") or {}).get(PINS_CONFIG) or {})
    merged = {**old, **pins}
    if merged == old:
        return ""
    after = _with_pins(before, merged)
    diff = _file_diff(path.name, before, after)
    for n, pin in sorted(pins.items()):
        say(f"pinning {n}: " + ", ".join(f"{k} {v}" for k, v in pin.items()))
    if write:
        write_atomic(path, after)
    return diff


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


def _edit_yaml(text: str, pins: dict[str, dict[str, Any]], image_pins: dict[str, str]) -> str:
    """Rewrite only the lines a promotion changes (comments and layout stay, so the diff is the change): in each
    pinned `models` item drop path/tags/properties and set version/sha256; in each pinned `images` item set
    `pinned`. The caller checks the result parses to the intended document."""
    lines = text.splitlines(keepends=True)
    for section, wanted in (("models", pins), ("images", {k: {"pinned": v} for k, v in image_pins.items()})):
        for name, values in wanted.items():
            lines = _edit_item(
                lines,
                section,
                name,
                values,
                drop=("path", "tags", "properties") if section == "models" else (),
            )
    return "".join(lines)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _edit_item(
    lines: list[str], section: str, name: str, values: dict[str, Any], drop: tuple[str, ...]
) -> list[str]:
    values = dict(values)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"{section}:"), None)
    if start is None:
        return lines
    names = {f"name: {name}", f"name: '{name}'", f'name: "{name}"'}
    item = None
    for i in range(start + 1, len(lines)):
        ln = lines[i]
        if ln.strip() and _indent(ln) <= _indent(lines[start]) and not ln.lstrip().startswith("- "):
            break  # the next key of the platform object: the section ended
        if ln.lstrip().startswith("- ") and ln.strip()[2:].strip() in names:
            item = i
            break
    if item is None:
        return lines
    key_indent = _indent(lines[item]) + 2
    end = item + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) >= key_indent):
        end += 1
    body = lines[item + 1 : end]
    trailing: list[str] = []
    while body and not body[-1].strip():
        trailing.insert(0, body.pop())
    out: list[str] = []
    skipping = False
    for ln in body:
        if skipping and (not ln.strip() or _indent(ln) > key_indent):
            continue  # the dropped key's nested lines
        skipping = False
        key = ln.strip().split(":", 1)[0] if _indent(ln) == key_indent else None
        if key in drop:
            skipping = True
        elif key in values:
            out.append(" " * key_indent + f"{key}: {_scalar(values.pop(key))}\n")
        else:
            out.append(ln)
    out += [" " * key_indent + f"{k}: {_scalar(v)}\n" for k, v in values.items()]
    return lines[: item + 1] + out + trailing + lines[end:]


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
