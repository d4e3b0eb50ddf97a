"""Where the Pulumi engine lives and the offline settings every mlinfra call into it uses.

`make setup` (scripts/engine.sh) builds or finds the engine and records its folder as the symlink
`.mlinfra/engine` in the checkout. Everything that runs the engine — the CLI, the Automation API in tests, the
examples — takes its environment from :func:`engine_env` so that settings cannot drift: no update checks, no plugin
downloads, a local ``file://`` backend and a passphrase secrets provider unless the caller chose others.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The machine-wide cache (engine builds, plugins, base images, service data); survives clean clones."""
    base = os.environ.get("MLINFRA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlinfra"
    )
    return Path(base)


def pinned_versions() -> dict[str, str]:
    """The pins of engine/versions.env (PULUMI_VERSION, PULUMI_KUBERNETES_VERSION, ...)."""
    out: dict[str, str] = {}
    path = REPO_ROOT / "engine" / "versions.env"
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"^([A-Z_]+)=(\S+)", line.strip())
            if m:
                out[m.group(1)] = m.group(2)
    return out


def cosign_binary() -> Path:
    """cosign as `make setup` builds it (scripts/engine.sh step 7): the independent verifier of image attestations."""
    return cache_dir() / "engine" / f"cosign-{pinned_versions().get('COSIGN_VERSION', '')}" / "cosign"


def pulumi_home() -> Path:
    return Path(os.environ.get("PULUMI_HOME") or cache_dir() / "pulumi-home")


def engine_bin_dir() -> Path | None:
    """The folder holding `pulumi` and `pulumi-language-python`: $MLINFRA_ENGINE_DIR, the checkout's
    `.mlinfra/engine` link written by `make setup`, or the folder of a `pulumi` on PATH."""
    explicit = os.environ.get("MLINFRA_ENGINE_DIR")
    if explicit:
        return Path(explicit)
    link = REPO_ROOT / ".mlinfra" / "engine"
    if (link / "pulumi").exists():
        return link.resolve()
    found = shutil.which("pulumi")
    return Path(found).parent if found else None


def engine_env(backend_dir: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running the engine offline.

    backend_dir: a folder for the ``file://`` state backend. Default: $PULUMI_BACKEND_URL if set, else
    ``.mlinfra/state`` in the checkout.
    """
    env = dict(os.environ if base is None else base)
    bin_dir = engine_bin_dir()
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PULUMI_HOME", str(pulumi_home()))
    env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    env.setdefault("PULUMI_CONFIG_PASSPHRASE", "")
    env.setdefault("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", "true")
    # The Python that runs programs and dynamic providers is the one mlinfra is installed in.
    import sys

    env.setdefault("PULUMI_PYTHON_CMD", sys.executable)
    if backend_dir is not None:
        Path(backend_dir).mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = f"file://{Path(backend_dir).resolve()}"
    elif "PULUMI_BACKEND_URL" not in env:
        state = REPO_ROOT / ".mlinfra" / "state"
        state.mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = f"file://{state}"
    return env


@dataclass
class EngineStatus:
    bin_dir: Path | None
    version: str | None
    expected: str

    @property
    def ok(self) -> bool:
        return self.version == f"v{self.expected}"


def engine_status() -> EngineStatus:
    expected = pinned_versions().get("PULUMI_VERSION", "?")
    bin_dir = engine_bin_dir()
    version = None
    if bin_dir is not None and (bin_dir / "pulumi").exists():
        try:
            version = subprocess.run(
                [str(bin_dir / "pulumi"), "version"],
                capture_output=True,
                text=True,
                timeout=30,
                env=engine_env(base=dict(os.environ)),
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            version = None
    return EngineStatus(bin_dir=bin_dir, version=version, expected=expected)
