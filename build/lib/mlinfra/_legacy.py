"""Old module names → where their code lives now, so stacks created before the house moved keep working.

Pulumi stores each dynamic provider in the stack's state as a pickle that names the provider's class by module
(``mlinfra.providers.cloud_endpoint.LocalEndpointProvider``); ``pulumi destroy`` and updates unpickle it from the
old state. Moving a provider module would break every existing stack, so each old name stays importable: a
meta-path finder answers an import of an old name with the module that holds the code now (and the attribute
renames listed here). User code that imported the old modules keeps working the same way.

tests/integration/test_legacy_state.py previews and destroys a state recorded before the move. Never remove an
entry while a stack written by the old code may exist.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

MOVED: dict[str, tuple[str, dict[str, str]]] = {
    # Dynamic providers (pickled into state by reference).
    "mlinfra.providers": ("mlinfra.registry.refs", {}),
    "mlinfra.providers.model_version": ("mlinfra.registry.provider", {}),
    "mlinfra.providers.scoring_image": ("mlinfra.images.provider", {}),
    "mlinfra.providers.cloud_endpoint": ("mlinfra.endpoints.provider", {}),
    "mlinfra.providers.edge_deployment": ("mlinfra.edge.provider", {}),
    "mlinfra.providers.quantized_model": ("mlinfra.endpoints.quantized_provider", {}),
    "mlinfra.data_collection": (
        "mlinfra.monitoring.provider",
        {"_Provider": "CollectionStorageProvider", "_Storage": "CollectionStorage"},
    ),
    # Component modules users may have imported directly.
    "mlinfra.registered_model": ("mlinfra.registry.registered_model", {}),
    "mlinfra.scoring_image": ("mlinfra.images.scoring_image", {"sha256_of": "sha256_file"}),
    "mlinfra.oci": ("mlinfra.images.oci", {"RegistryError": "OciRegistryError"}),
    "mlinfra.cloud_endpoint": ("mlinfra.endpoints.cloud_endpoint", {}),
    "mlinfra.fpga_endpoint": ("mlinfra.endpoints.fpga_endpoint", {}),
    "mlinfra.quantize": ("mlinfra.endpoints.quantize", {}),
    "mlinfra.endpoint": ("mlinfra.endpoints", {}),
    "mlinfra.endpoint.local": ("mlinfra.endpoints.local", {}),
    "mlinfra.endpoint.k8s": ("mlinfra.endpoints.kubernetes", {}),
    "mlinfra.endpoint.plan": ("mlinfra.endpoints.plan", {}),
    "mlinfra.endpoint.gates": ("mlinfra.endpoints.gates", {}),
    "mlinfra.endpoint.nginx": ("mlinfra.endpoints.nginx", {}),
    "mlinfra.edge_deployment": ("mlinfra.edge.edge_deployment", {}),
    "mlinfra.monitor": ("mlinfra.monitoring.drift", {}),
    "mlinfra.services": ("mlinfra.lab.services", {}),
    "mlinfra.samples": ("mlinfra.lab.samples", {}),
    "mlinfra.kube": ("mlinfra.lab.cluster", {}),
}


def _alias(old: str, new: str, renames: dict[str, str]) -> types.ModuleType:
    """A module named OLD whose attributes are NEW's (with RENAMES: old attribute → new attribute)."""
    target = importlib.import_module(new)
    if not renames:
        return target
    mod = types.ModuleType(old, target.__doc__)

    def __getattr__(name: str) -> Any:
        return getattr(target, renames.get(name, name))

    mod.__dict__["__getattr__"] = __getattr__  # PEP 562: looked up in the module's namespace
    mod.__dict__["__path__"] = getattr(target, "__path__", [])
    return mod


class _Loader(importlib.abc.Loader):
    def __init__(self, new: str, renames: dict[str, str]):
        self.new, self.renames = new, renames

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _alias(spec.name, self.new, self.renames)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        new, renames = MOVED[fullname]
        return importlib.machinery.ModuleSpec(fullname, _Loader(new, renames), is_package=True)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
