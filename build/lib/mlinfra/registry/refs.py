"""Pulumi dynamic providers behind mlinfra's components. They run in the engine's provider process, import only
mlinfra, and hold no state of their own (credentials arrive as secret inputs, never in the pickled provider)."""


def model_identities(models: object) -> list[object]:
    """What identifies the models a resource uses (credentials are not content). A model registered by the same
    update is unknown at preview: it compares as a change."""
    return [
        {x: m.get(x) for x in ("name", "version", "sha256", "registry")}
        if isinstance(m, dict)
        else "(known at up)"
        for m in models or []  # type: ignore[attr-defined]
    ]
