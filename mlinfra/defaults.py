"""What mlinfra's components use when an argument is left out: the addresses of the local services, the base
images' references, the default model registry. One small module, so there is one rule for each.

Every address is on loopback; each port can be moved with its variable (MLINFRA_REGISTRY_PORT,
MLINFRA_AZURITE_PORT, MLINFRA_MQTT_PORT). Nothing here starts anything: :mod:`mlinfra.lab` starts the services
these addresses point at (``make services``), and the library never imports the lab.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlinfra.engine import cache_dir, pinned_versions
from mlinfra.errors import ServiceError

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret: every Azurite install has it).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

BASE_REPO = "mlinfra/python-base"
"""Repository of the scoring images' base (Debian minbase + python3) in the local registry."""
ROUTER_REPO = "mlinfra/router"
"""Repository of the endpoints' router image (Debian minbase + nginx) in the local registry."""


def _port(var: str, default: int) -> int:
    raw = os.environ.get(var, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ServiceError(f"{var}={raw!r} is not a port number: set it to an integer in 1..65535") from None
    if not 0 < port < 65536:
        raise ServiceError(f"{var}={port} is outside 1..65535")
    return port


def registry_port() -> int:
    return _port("MLINFRA_REGISTRY_PORT", 5000)


def azurite_port() -> int:
    return _port("MLINFRA_AZURITE_PORT", 10000)


def mqtt_port() -> int:
    return _port("MLINFRA_MQTT_PORT", 1883)


def registry_url() -> str:
    """The local OCI registry's API root."""
    return f"http://127.0.0.1:{registry_port()}"


def registry_host() -> str:
    """The local OCI registry as image references name it (host:port)."""
    return f"127.0.0.1:{registry_port()}"


def buildx_builder() -> str:
    """The BuildKit builder `ScoringImage(dockerfile=)` builds with (a buildx builder instance name): $MLINFRA_BUILDER,
    else ``mlinfra`` — the local buildkitd that `make services` runs and registers under that name."""
    return os.environ.get("MLINFRA_BUILDER") or "mlinfra"


def buildx_config_dir() -> Path:
    """Where buildx (and the docker-build provider) keep builder instances: $BUILDX_CONFIG, else
    $DOCKER_CONFIG/buildx, else ~/.docker/buildx."""
    if os.environ.get("BUILDX_CONFIG"):
        return Path(os.environ["BUILDX_CONFIG"])
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "buildx"


def azurite_blob_url() -> str:
    return f"http://127.0.0.1:{azurite_port()}/{AZURITE_ACCOUNT}"


def azurite_connection_string() -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={azurite_blob_url()};"
    )


def mqtt_url() -> str:
    return f"mqtt://127.0.0.1:{mqtt_port()}"


def docker_cli() -> str:
    """The Docker CLI endpoints drive: Debian's (it has buildx) rather than a newer one earlier on PATH."""
    import shutil

    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


def state_dir(name: str) -> Path:
    """The folder where the local service NAME keeps its data, PID and log (in the machine-wide cache)."""
    path = cache_dir() / "services" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_suite() -> str:
    return pinned_versions().get("BASE_SUITE", "bookworm")


def base_image_ref() -> str:
    """The scoring images' default base, as pushed to the local registry by ``make services``."""
    return f"{registry_host()}/{BASE_REPO}:{base_suite()}"


def router_image_ref() -> str:
    """The endpoints' router image (Debian nginx), pushed to the local registry by ``make services``."""
    return f"{registry_host()}/{ROUTER_REPO}:{base_suite()}"


def broker_credentials() -> dict[str, str]:
    """The local broker's admin user {username, password}: created once, file mode 0600 in the cache; the lab's
    Mosquitto is configured with it."""
    import secrets

    path = state_dir("mosquitto") / "admin.json"
    if not path.exists():
        creds = {"username": "mlinfra-admin", "password": secrets.token_urlsafe(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(creds, f)
    return dict(json.loads(path.read_text()))


def model_registry_uri(explicit: str | None = None, stack_config: str | None = None) -> str:
    """The model registry, by one rule everywhere (components, CLI, GitOps): EXPLICIT (an argument or --registry),
    else STACK_CONFIG (a program's ``mlinfra:registry`` config), else $MLINFRA_REGISTRY, else the folder registry
    ``./.mlinfra/registry`` (of the Pulumi project, or of the current folder for the CLI)."""
    return (
        explicit
        or stack_config
        or os.environ.get("MLINFRA_REGISTRY")
        or f"file://{Path.cwd().resolve() / '.mlinfra' / 'registry'}"
    )
