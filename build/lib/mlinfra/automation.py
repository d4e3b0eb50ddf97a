"""Running stack programs on the real engine through the Automation API, with mlinfra's offline settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pulumi import automation as auto

from mlinfra.engine import engine_bin_dir, engine_env


def pulumi_command() -> auto.PulumiCommand:
    """The engine `make setup` built (or found on PATH)."""
    bin_dir = engine_bin_dir()
    if bin_dir is None or not (bin_dir / "pulumi").exists():
        raise RuntimeError("no Pulumi engine found: run `make setup` (builds it) or put pulumi on PATH")
    return auto.PulumiCommand(root=str(bin_dir.parent), skip_version_check=True)


def local_stack(
    project_dir: Path | str,
    stack: str,
    backend_dir: Path | str | None = None,
    config: Mapping[str, str | auto.ConfigValue] | None = None,
    env: Mapping[str, str] | None = None,
) -> auto.Stack:
    """Create or select STACK of the Pulumi project in PROJECT_DIR on a local file backend and set CONFIG."""
    env_vars = engine_env(backend_dir)
    if env:
        env_vars.update(env)
    ws = auto.LocalWorkspaceOptions(
        work_dir=str(project_dir),
        env_vars=env_vars,
        pulumi_home=env_vars["PULUMI_HOME"],
        pulumi_command=pulumi_command(),
    )
    st = auto.create_or_select_stack(stack_name=stack, work_dir=str(project_dir), opts=ws)
    if config:
        st.set_all_config(
            {
                k: v if isinstance(v, auto.ConfigValue) else auto.ConfigValue(value=v)
                for k, v in config.items()
            }
        )
    return st
