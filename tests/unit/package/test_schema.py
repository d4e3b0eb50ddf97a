"""The multi-language package's schema, as Pulumi's component-provider host infers it from mlinfra/package."""

from __future__ import annotations

from pathlib import Path

import mlinfra.package as package


def _schema() -> dict:
    import json

    from pulumi.provider.experimental.component import ComponentProvider

    provider = ComponentProvider(package.COMPONENTS, package.PACKAGE, version=package.__version__)
    return json.loads(provider.schema)


def test_the_package_serves_three_components_with_language_neutral_inputs() -> None:
    schema = _schema()
    resources = schema["resources"]
    assert set(resources) == {
        "mlinfra:index:RegisteredModel",
        "mlinfra:index:ScoringImage",
        "mlinfra:index:CloudEndpoint",
    }
    model = resources["mlinfra:index:RegisteredModel"]
    assert model["isComponent"] and model["requiredInputs"] == ["path"]
    assert {"modelName", "registry", "tags"} <= set(model["inputProperties"])
    assert {"ref", "version", "sha256", "modelName"} <= set(model["properties"])
    image = resources["mlinfra:index:ScoringImage"]
    assert image["inputProperties"]["models"]["type"] == "array" and image["requiredInputs"] == ["models"]
    assert {"imageRef", "digest"} <= set(image["properties"])
    endpoint = resources["mlinfra:index:CloudEndpoint"]
    assert endpoint["requiredInputs"] == ["image"]
    assert {"scoringUri", "primaryKey", "grpcUri", "collectedTo"} <= set(endpoint["properties"])
    collection = endpoint["inputProperties"]["dataCollection"]["$ref"].rsplit("/", 1)[1]
    assert {"storage", "sampleRate", "capture", "headers"} <= set(schema["types"][collection]["properties"])
    assert "storageCredential" not in schema["types"][collection]["properties"], (
        "keys come from secret config"
    )


def test_the_plugin_folder_is_a_python_plugin() -> None:
    folder = Path(package.__file__).parent
    assert "runtime: python" in (folder / "PulumiPlugin.yaml").read_text()
    assert "component_provider_host" in (folder / "__main__.py").read_text()
