"""Serve mlinfra's components to the Pulumi engine (`python -m mlinfra.package`, or this folder as a plugin)."""

from pulumi.provider.experimental import component_provider_host

from mlinfra.package import COMPONENTS, PACKAGE, __version__

if __name__ == "__main__":
    component_provider_host(components=COMPONENTS, name=PACKAGE, version=__version__)
