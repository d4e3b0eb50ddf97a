"""Serve mlinfra's components to the Pulumi engine (`python -m mlinfra.package`, or this folder as a plugin).

The engine runs this file — and the dynamic providers underneath — with $PULUMI_PYTHON_CMD, else python3: an
interpreter without mlinfra exits naming the fix."""

import sys

try:
    from pulumi.provider.experimental import component_provider_host

    from mlinfra.package import COMPONENTS, PACKAGE, __version__
except ImportError as e:
    sys.exit(
        f"mlinfra's component package cannot start: {sys.executable} cannot import {e.name!r}. Set "
        "PULUMI_PYTHON_CMD to the python of the virtualenv mlinfra is installed in (e.g. .venv/bin/python); the "
        "engine runs mlinfra's dynamic providers with it too."
    )

if __name__ == "__main__":
    component_provider_host(components=COMPONENTS, name=PACKAGE, version=__version__)
