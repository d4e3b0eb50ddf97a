"""What a preview means in model terms: engine events → :class:`Summary` → markdown (for a pull request) and JSON.

The input is a list of *records*, small dicts made from the Automation API's engine events by :func:`record`
(one per resource step, policy violation and error diagnostic). They are what `mlinfra preview --events FILE`
saves, so a summary can be rendered again from a recording (the golden tests do exactly that).

mlinfra's components put what matters into their inputs (see RegisteredModel, ScoringImage, CloudEndpoint and
EdgeDeployment), so a step's old and new inputs are enough: model version and sha256, signature, image digest,
traffic map, edge target condition and device counts. The endpoint's rollout steps come from its router resource's
checked inputs (``rollout_plan``), which the engine knows at preview.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pulumi.automation import events as ev

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's marker for a value known only at `up`

MODEL = "mlinfra:registry:RegisteredModel"
IMAGE = "mlinfra:images:ScoringImage"
ENDPOINT = "mlinfra:endpoints:CloudEndpoint"
EDGE = "mlinfra:edge:EdgeDeployment"
CHANGES = ("create", "update", "replace", "create-replacement", "delete", "delete-replaced")


# -- recording ----------------------------------------------------------------------------------------------------


def record(event: ev.EngineEvent) -> dict[str, Any] | None:
    """The part of an engine event a summary needs, as plain JSON (None for events it does not use)."""
    if event.resource_pre_event is not None:
        m = event.resource_pre_event.metadata
        return {
            "kind": "step",
            "op": m.op.value if hasattr(m.op, "value") else str(m.op),
            "urn": m.urn,
            "type": m.type,
            "old": _state(m.old),
            "new": _state(m.new),
            "diffs": list(m.diffs or []),
        }
    if event.policy_event is not None:
        p = event.policy_event
        return {
            "kind": "policy",
            "urn": p.resource_urn or "",
            "policy": p.policy_name,
            "pack": p.policy_pack_name,
            "level": p.enforcement_level,
            "message": p.message,
        }
    if event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
        d = event.diagnostic_event
        return {"kind": "error", "urn": d.urn or "", "message": d.message.strip()}
    return None


def _state(s: ev.StepEventStateMetadata | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"inputs": s.inputs or {}, "outputs": s.outputs or {}}


# -- the summary ----------------------------------------------------------------------------------------------------


@dataclass
class ModelChange:
    name: str
    op: str
    version_before: int | None
    version_after: int | str | None
    """An int, "new" (assigned at up) or None (deleted)."""
    sha_before: str | None
    sha_after: str | None
    signature: list[str] = field(default_factory=list)
    """Human-readable signature differences; any of them makes the change breaking."""
    breaking: bool = False
    pinned: bool = False
    properties_after: dict[str, str] = field(default_factory=dict)
    signed_by: list[str] = field(default_factory=list)
    """Key ids of the stack's signers of the version after the change (RegisteredModel(signing_key=))."""


@dataclass
class ImageChange:
    name: str
    op: str
    digest_before: str | None
    digest_after: str | None
    """A digest, "rebuilt" (known at up) or None (deleted)."""
    models_before: list[str]
    models_after: list[str]
    pinned: bool = False


@dataclass
class EndpointChange:
    name: str
    op: str
    endpoint_name: str
    auth: str | None
    data_collection: float | None
    traffic_before: dict[str, float]
    traffic_after: dict[str, float]
    images_before: dict[str, str]
    images_after: dict[str, str]
    rollout: list[str] = field(default_factory=list)


@dataclass
class EdgeChange:
    name: str
    op: str
    condition_before: str | None
    condition_after: str | None
    devices_matched: int | None
    devices_known: int | None
    models_before: list[str]
    models_after: list[str]
    gate: dict[str, Any] = field(default_factory=dict)


@dataclass
class Drift:
    """A resource a refresh found other than declared (its provider's ``observed`` output against the declared
    one): what `pulumi up` will repair."""

    resource: str
    found: list[str]


@dataclass
class Violation:
    policy: str
    level: str
    resource: str
    message: str


@dataclass
class Summary:
    stack: str
    project: str
    counts: dict[str, int]
    models: list[ModelChange] = field(default_factory=list)
    images: list[ImageChange] = field(default_factory=list)
    endpoints: list[EndpointChange] = field(default_factory=list)
    edge: list[EdgeChange] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(self.counts.get(op, 0) for op in CHANGES)

    @property
    def breaking(self) -> list[ModelChange]:
        return [m for m in self.models if m.breaking]

    @property
    def blocking(self) -> list[Violation]:
        return [v for v in self.violations if v.level == "mandatory"]

    def exit_code(self) -> int:
        """0: fine to apply; 1: breaking changes, mandatory policy violations or drift (previews with refresh);
        2: the preview itself failed."""
        if self.errors and not self.blocking:
            return 2
        return 1 if self.breaking or self.blocking or self.drift else 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = self.changed
        out["breaking"] = bool(self.breaking)
        out["drifted"] = bool(self.drift)
        out["exit_code"] = self.exit_code()
        return out


def _phrases(observed: Any, declared: Any, path: str = "") -> list[str]:
    if isinstance(observed, dict) and isinstance(declared, dict):
        out = []
        for k in sorted(observed):
            out += _phrases(observed[k], declared.get(k), f"{path}{k}.")
        return out
    if observed == declared or declared is None:
        return []
    where = path.rstrip(".")
    return [f"{where + ': ' if where else ''}{observed} (declared: {declared})"]


def drift_found(step: dict[str, Any]) -> list[str]:
    """What a step's refreshed state says differs from what is declared: the provider's ``observed`` output (set
    by `pulumi refresh` / `preview --refresh`) against the ``observed`` its check declares."""
    if step.get("op") in ("same", "create", "read", "refresh"):
        return []
    observed = _outputs(step, "old").get("observed")
    declared = _inputs(step, "new").get("observed")
    if not observed or not declared or observed == declared:
        return []
    return _phrases(observed, declared)


def _owner(urn: str) -> str:
    """``CloudEndpoint churn-staging-local``: the mlinfra component a provider resource belongs to, and its name."""
    chain = urn.split("::")[-2] if urn.count("::") >= 3 else ""
    kinds = [t.rsplit(":", 1)[-1] for t in chain.split("$") if t.startswith("mlinfra:")]
    return f"{kinds[-1]} {_name(urn)}" if kinds else _name(urn)


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _known(v: Any) -> Any:
    return None if v == UNKNOWN else v


def _int(v: Any) -> int | None:
    v = _known(v)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _inputs(step: dict[str, Any], which: str) -> dict[str, Any]:
    s = step.get(which) or {}
    return s.get("inputs") or {}


def _outputs(step: dict[str, Any], which: str) -> dict[str, Any]:
    s = step.get(which) or {}
    return s.get("outputs") or {}


def signature_changes(before: Any, after: Any) -> list[str]:
    """Differences between two model signatures (inputs/outputs added, removed, retyped or reshaped)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    out = []
    for side in ("inputs", "outputs"):
        old = {t.get("name"): t for t in before.get(side) or [] if isinstance(t, dict)}
        new = {t.get("name"): t for t in after.get(side) or [] if isinstance(t, dict)}
        for n in sorted(set(old) - set(new), key=str):
            out.append(f"{side[:-1]} `{n}` removed")
        for n in sorted(set(new) - set(old), key=str):
            out.append(f"{side[:-1]} `{n}` added ({_tensor(new[n])})")
        for n in sorted(set(old) & set(new), key=str):
            if (old[n].get("datatype"), _shape(old[n])) != (new[n].get("datatype"), _shape(new[n])):
                out.append(f"{side[:-1]} `{n}` {_tensor(old[n])} → {_tensor(new[n])}")
    return out


def _shape(t: dict[str, Any]) -> list[int]:
    return [int(d) for d in t.get("shape") or []]


def _tensor(t: dict[str, Any]) -> str:
    dims = ",".join("?" if d < 0 else str(d) for d in _shape(t))
    return f"{t.get('datatype')}[{dims}]"


def _weights(traffic: Any) -> dict[str, float]:
    if not isinstance(traffic, dict):
        return {}
    return {k: float(v) for k, v in traffic.items() if isinstance(v, int | float)}


def _images(deployments: Any) -> dict[str, str]:
    if not isinstance(deployments, dict):
        return {}
    return {d: str(_known((s or {}).get("image")) or "built at up") for d, s in deployments.items()}


def summarize(records: list[dict[str, Any]], stack: str, project: str) -> Summary:
    steps: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "step":
            steps[r["urn"]] = r  # the last event of a resource wins
    counts: dict[str, int] = {}
    for s in steps.values():
        if s["type"] != "pulumi:pulumi:Stack" and not s["type"].startswith("pulumi:providers:"):
            counts[s["op"]] = counts.get(s["op"], 0) + 1
    summary = Summary(stack=stack, project=project, counts=dict(sorted(counts.items())))
    for urn, s in sorted(steps.items()):
        kind = s["type"]
        if kind == MODEL:
            summary.models.append(_model(s, _children(steps, urn)))
        elif kind == IMAGE:
            summary.images.append(_image(s, _children(steps, urn)))
        elif kind == ENDPOINT:
            summary.endpoints.append(_endpoint(s, _children(steps, urn)))
        elif kind == EDGE:
            summary.edge.append(_edge(s))
    for urn, s in sorted(steps.items()):
        found = drift_found(s)
        if found:
            summary.drift.append(Drift(_owner(urn), found))
    for r in records:
        if r.get("kind") == "policy":
            summary.violations.append(
                Violation(
                    r["policy"], r["level"], _name(r["urn"]) if r["urn"] else stack, _clean(r["message"])
                )
            )
        elif r.get("kind") == "error":
            summary.errors.append(_error_text(r["message"]))
    if summary.blocking:  # the engine's own "preview failed" only repeats that the policies blocked it
        summary.errors = [
            e for e in summary.errors if e.strip().rstrip(".") not in ("preview failed", "update failed")
        ]
    return summary


def _error_text(message: str) -> str:
    """An engine error, short: for a program's traceback, the exception line (the rest is in the CI log)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]
    return " ".join(lines)


def _children(steps: dict[str, dict[str, Any]], urn: str) -> list[dict[str, Any]]:
    """Steps of the resources the component at URN parents (its qualified type prefixes theirs; mlinfra names
    children `<component>-<part>`)."""
    parent_type, name = urn.split("::")[2], _name(urn)
    return [
        s
        for u, s in steps.items()
        if u.count("::") >= 3
        and u.split("::")[2].startswith(parent_type + "$")
        and _name(u).startswith(name + "-")
    ]


def _clean(message: str) -> str:
    """A policy event's message is the description, then the violation: keep the violation."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _model(s: dict[str, Any], children: list[dict[str, Any]] | None = None) -> ModelChange:
    old_in, new_in, old_out = _inputs(s, "old"), _inputs(s, "new"), _outputs(s, "old")
    signers = sorted(
        str(_known(_inputs(c, "new").get("key_id")))
        for c in children or []
        if _name(c["urn"]).endswith("-signature") and c.get("new") and _known(_inputs(c, "new").get("key_id"))
    )
    vb = _int(old_out.get("version")) or _int(old_in.get("version"))
    sha_b = _known(old_out.get("sha256")) or _known(old_in.get("sha256"))
    sha_a = _known(new_in.get("sha256")) if s.get("new") else None
    va: int | str | None
    if not s.get("new"):
        va = None
    elif _int(new_in.get("version")) is not None:
        va = _int(new_in.get("version"))
    elif sha_a is not None and sha_a == sha_b:
        va = vb
    else:
        va = "new"
    sig = signature_changes(old_out.get("signature") or old_in.get("signature"), new_in.get("signature"))
    breaking = any(not c.startswith("output") or " added " not in c for c in sig)
    return ModelChange(
        name=_name(s["urn"]),
        op=s["op"],
        version_before=vb,
        version_after=va,
        sha_before=sha_b,
        sha_after=sha_a,
        signature=sig,
        breaking=breaking,
        pinned=bool(new_in.get("pinned")),
        properties_after=dict(new_in.get("properties") or {}),
        signed_by=signers,
    )


def _image(s: dict[str, Any], children: list[dict[str, Any]]) -> ImageChange:
    old_in, new_in, old_out = _inputs(s, "old"), _inputs(s, "new"), _outputs(s, "old")
    before = _known(old_out.get("digest"))
    pinned = _known(new_in.get("pinned"))
    after: str | None
    if not s.get("new"):
        after = None
    elif isinstance(pinned, str) and "@" in pinned:
        after = pinned.split("@", 1)[1]
    elif any(c["op"] in CHANGES for c in children) or (s["op"] in CHANGES and not children):
        after = "rebuilt"
    else:
        after = before
    return ImageChange(
        name=_name(s["urn"]),
        op=s["op"],
        digest_before=before,
        digest_after=after,
        models_before=[_model_label(m) for m in old_in.get("models") or []],
        models_after=[_model_label(m) for m in new_in.get("models") or []],
        pinned=isinstance(pinned, str),
    )


def _model_label(m: Any) -> str:
    """A packaged model: {"name", "version"} (the version is unknown until `up` registers it) or "name:version"."""
    if isinstance(m, dict):
        v = _int(m.get("version"))
        return f"{m.get('name')}:{'next' if v is None else v}"
    return str(_known(m) or "?")


def _endpoint(s: dict[str, Any], children: list[dict[str, Any]]) -> EndpointChange:
    old_in, new_in = _inputs(s, "old"), _inputs(s, "new")
    rollout: list[str] = []
    for c in children:
        plan = _inputs(c, "new").get("rollout_plan")
        if c["op"] in ("update", "create", "replace") and isinstance(plan, list):
            rollout = [str(p) for p in plan]
    dc = new_in.get("data_collection")
    return EndpointChange(
        name=_name(s["urn"]),
        op=s["op"],
        endpoint_name=str(new_in.get("endpoint_name") or old_in.get("endpoint_name") or _name(s["urn"])),
        auth=new_in.get("auth"),
        data_collection=float(dc["sample_rate"]) if isinstance(dc, dict) and "sample_rate" in dc else None,
        traffic_before=_weights(old_in.get("traffic")),
        traffic_after=_weights(new_in.get("traffic")),
        images_before=_images(old_in.get("deployments")),
        images_after=_images(new_in.get("deployments")),
        rollout=rollout,
    )


def _edge(s: dict[str, Any]) -> EdgeChange:
    old_in, new_in = _inputs(s, "old"), _inputs(s, "new")
    return EdgeChange(
        name=_name(s["urn"]),
        op=s["op"],
        condition_before=old_in.get("target_condition"),
        condition_after=new_in.get("target_condition") if s.get("new") else None,
        devices_matched=_int(new_in.get("devices_matched")),
        devices_known=_int(new_in.get("devices_known")),
        models_before=[_model_label(m) for m in old_in.get("models") or []],
        models_after=[_model_label(m) for m in new_in.get("models") or []],
        gate=dict(new_in.get("gate") or {}),
    )


# -- rendering ------------------------------------------------------------------------------------------------------

OP_WORDS = {
    "create": "to create",
    "update": "to update",
    "replace": "to replace",
    "create-replacement": "to replace",
    "delete": "to delete",
    "same": "unchanged",
}


def _short(digest: str | None) -> str:
    if digest is None:
        return "—"
    if digest == "rebuilt":
        return "_rebuilt (digest at up)_"
    return f"`{digest[:19]}…`" if digest.startswith("sha256:") and len(digest) > 19 else f"`{digest}`"


def _sha(sha: str | None) -> str:
    return "—" if not sha else f"`{sha[:12]}`"


def _arrow(before: str, after: str) -> str:
    return before if before == after else f"{before} → **{after}**"


def _version(v: int | str | None) -> str:
    return "—" if v is None else ("_next (assigned at up)_" if v == "new" else f"v{v}")


def _traffic(w: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g} %" for k, v in sorted(w.items(), key=lambda kv: (-kv[1], kv[0]))) or "—"


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


COMMENT_LIMIT = 60_000
"""Characters a pull-request comment may hold (GitHub's limit is 65,536), with room for a CI's own header."""


def render_for_comment(s: Summary, limit: int = COMMENT_LIMIT) -> str:
    """The markdown, with long tables cut (most important rows first: breaking, then changed) until it fits."""
    for rows in (None, 100, 40, 15, 5, 1):
        md = render_markdown(s, rows)
        if len(md) <= limit:
            return md
    return md[: limit - 200] + "\n\n… cut to fit a comment: see the JSON summary (`--json`)\n"


def _cut(items: list[Any], max_rows: int | None) -> tuple[list[Any], int]:
    if max_rows is None or len(items) <= max_rows:
        return items, 0
    return items[:max_rows], len(items) - max_rows


def _more(n: int, what: str, cols: int) -> list[str]:
    return [f"| … {n} more {what}: see the JSON summary (`--json`) |" + " |" * (cols - 1)] if n else []


def render_markdown(s: Summary, max_rows: int | None = None) -> str:
    out = [f"### mlinfra preview: `{s.project}` / `{s.stack}`", ""]
    moving = [f"{n} {OP_WORDS.get(op, op)}" for op, n in s.counts.items() if op != "same" and n]
    head = ", ".join(moving) if moving else "**No changes**"
    if s.counts.get("same"):
        head += f" · {s.counts['same']} unchanged"
    flags = []
    if s.breaking:
        flags.append(f"⚠️ {len(s.breaking)} breaking model change(s)")
    if s.violations:
        flags.append(f"⛔ {len(s.violations)} policy violation(s)")
    if s.errors:
        flags.append("❌ preview failed")
    if s.drift:
        flags.append(f"🔧 {len(s.drift)} resource(s) drifted")
    out.append(head + (" · " + " · ".join(flags) if flags else ""))
    out.append("")

    models = [m for m in s.models if m.op != "same" or m.signature]
    if models:
        out += ["#### Models", "", "| model | version | sha256 | signature |", "|---|---|---|---|"]
        models.sort(key=lambda m: (not m.breaking, m.op == "same"))
        models, more = _cut(models, max_rows)
        for m in models:
            sig = "<br>".join(_esc(c) for c in m.signature) if m.signature else "unchanged"
            if m.breaking:
                sig = "⚠️ **breaking**: " + sig
            pin = " (pinned)" if m.pinned else ""
            if m.signed_by:
                pin += " · signed by " + ", ".join(f"`{k[:12]}`" for k in m.signed_by)
            out.append(
                f"| {m.name}{pin} | {_arrow(_version(m.version_before), _version(m.version_after))} | "
                f"{_arrow(_sha(m.sha_before), _sha(m.sha_after))} | {sig} |"
            )
        out += [*_more(more, "models", 4), ""]
    images = [i for i in s.images if i.op != "same"]
    if images:
        out += ["#### Images", "", "| image | digest | models |", "|---|---|---|"]
        images, more_images = _cut(images, max_rows)
        for i in images:
            mb, ma = ", ".join(i.models_before) or "—", ", ".join(i.models_after) or "—"
            out.append(
                f"| {i.name}{' (pinned)' if i.pinned else ''} | "
                f"{_arrow(_short(i.digest_before), _short(i.digest_after))} | {_arrow(mb, ma)} |"
            )
        out += [*_more(more_images, "images", 3), ""]
    endpoints = [e for e in s.endpoints if e.op != "same"]
    if endpoints:
        out += ["#### Endpoints", ""]
        endpoints, more_endpoints = _cut(endpoints, max_rows)
        for e in endpoints:
            dc = "off" if e.data_collection is None else f"{e.data_collection * 100:g} % sampled"
            out.append(f"**{e.name}** (`{e.endpoint_name}`, {e.op}; auth {e.auth}, data collection {dc})")
            out += ["", "| deployment | image | traffic |", "|---|---|---|"]
            for d in sorted(set(e.images_before) | set(e.images_after)):
                ib, ia = e.images_before.get(d, "—"), e.images_after.get(d, "—")
                tb = f"{e.traffic_before[d]:g} %" if d in e.traffic_before else "—"
                ta = f"{e.traffic_after[d]:g} %" if d in e.traffic_after else "—"
                out.append(f"| {d} | {_arrow(_image_ref(ib), _image_ref(ia))} | {_arrow(tb, ta)} |")
            out.append("")
            if e.rollout:
                out += ["Rollout planned:", ""]
                out += [f"{n}. {_esc(step)}" for n, step in enumerate(e.rollout, 1)]
                out.append("")
        if more_endpoints:
            out += [f"… {more_endpoints} more endpoints change: see the JSON summary (`--json`)", ""]
    edge = [e for e in s.edge if e.op != "same"]
    if edge:
        out += ["#### Edge deployments", "", "| deployment | target condition | devices | models | gate |"]
        out.append("|---|---|---|---|---|")
        edge, more_edge = _cut(edge, max_rows)
        for g in edge:
            cond = _arrow(f"`{g.condition_before}`" if g.condition_before else "—", f"`{g.condition_after}`")
            devices = (
                "unknown (fleet unreadable)"
                if g.devices_matched is None
                else f"{g.devices_matched} of {g.devices_known} targeted"
            )
            gate = (
                f"≥ {float(g.gate.get('min_success_fraction', 0)) * 100:g} % succeed, "
                f"≤ {int(g.gate.get('max_failures', 0))} failures"
                if g.gate
                else "—"
            )
            mb, ma = ", ".join(g.models_before) or "—", ", ".join(g.models_after) or "—"
            out.append(f"| {g.name} | {cond} | {devices} | {_arrow(mb, ma)} | {gate} |")
        out += [*_more(more_edge, "edge deployments", 5), ""]
    if s.drift:
        out += [
            "#### Drift",
            "",
            "Found by the refresh: what runs is not what the stack declares; `pulumi up` repairs it.",
            "",
            "| resource | found |",
            "|---|---|",
        ]
        drift, more_drift = _cut(s.drift, max_rows)
        for d in drift:
            out.append(f"| {_esc(d.resource)} | {'<br>'.join(_esc(f) for f in d.found)} |")
        out += [*_more(more_drift, "drifted resources", 2), ""]
    if s.violations:
        out += [
            "#### Policy violations",
            "",
            "| policy | level | resource | violation |",
            "|---|---|---|---|",
        ]
        violations, more_violations = _cut(s.violations, max_rows)
        for v in violations:
            out.append(f"| {v.policy} | {v.level} | {v.resource} | {_esc(v.message)} |")
        out += [*_more(more_violations, "violations", 4), ""]
    if s.errors:
        out += ["#### Errors", ""]
        out += [f"- {_esc(e)}" for e in s.errors]
        out.append("")
    if not (s.models or s.images or s.endpoints or s.edge or s.drift or s.violations or s.errors):
        out += ["_Nothing of mlinfra's in this plan: the program declares no mlinfra component (the counts above "
                "are the engine's own)._", ""]  # fmt: skip
    if s.exit_code() == 0:
        verdict = "✅ safe to apply"
    elif s.exit_code() == 2:
        verdict = "❌ the preview failed: fix the errors above"
    elif s.blocking:
        verdict = "⛔ blocked by policy: fix the violations above"
    elif s.drift and not s.breaking:
        verdict = "🔧 drift: the stack no longer runs as declared; `pulumi up` repairs it"
    else:
        verdict = "⚠️ breaking model change: callers must change with it; merge deliberately"
    out.append(f"_{verdict}_")
    return "\n".join(out) + "\n"


def _image_ref(ref: str) -> str:
    if "@sha256:" in ref:
        repo, digest = ref.split("@", 1)
        return f"`{repo.rsplit('/', 1)[-1]}@{digest[:19]}…`"
    if ref == "—":
        return ref
    return f"_{ref}_" if ref == "built at up" else f"`{ref}`"


def dumps(summary: Summary) -> str:
    return json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n"
