"""`make demo`: `pulumi up` the quickstart on the real engine with local defaults and print its outputs."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from pulumi import automation as auto  # noqa: E402

from mlinfra.automation import local_stack  # noqa: E402
from mlinfra.lab import services  # noqa: E402


def main() -> int:
    services.ensure(["docker", "azurite", "registry", "python-base", "router-base"], progress=lambda _m: None)
    stack = local_stack(
        HERE,
        "dev",
        config={
            "mlinfra:registry": f"azblob://{services.AZURITE_ACCOUNT}/models?endpoint={services.azurite_blob_url()}",
            "mlinfra:registryCredential": auto.ConfigValue(value=services.AZURITE_KEY, secret=True),
        },
    )
    print(f"pulumi up: {HERE.name} (stack dev)")
    result = stack.up(on_output=print)
    print("\nOutputs:")
    for key, out in sorted(result.outputs.items()):
        print(f"  {key:16s} {'[secret]' if out.secret else out.value}")
    ref = result.outputs["image_ref"].value
    body = (
        "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, 64], "
        "'datatype': 'FP32', 'data': [0.1] * 64}]}))"
    )
    print(
        f"\nTry the image:\n  docker run --rm -d -p 127.0.0.1:8080:8080 {ref}\n"
        f'  python3 -c "{body}" | curl -s -H "Content-Type: application/json" -d @- '
        "127.0.0.1:8080/v2/models/quickstart-mlp/infer"
    )
    uri = result.outputs["scoring_uri"].value
    # The key is a Pulumi secret: it goes to an owner-only file for the curl below, never to the terminal.
    key_file = HERE / ".mlinfra" / "endpoint-key"
    key_file.parent.mkdir(exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(result.outputs["primary_key"].value)
    print(
        "\nScore through the endpoint (router on loopback, key checked):\n"
        f'  curl -s -H "Authorization: Bearer $(cat {key_file})" -H "Content-Type: application/json" '
        f'-d "{{\\"data\\": [[$(python3 -c \'print(",".join(["0.1"] * 64))\')]]}}" {uri}'
    )
    print(
        f"\nWhat it scores is captured under {result.outputs['collected_to'].value}/quickstart-dev/blue/… ; check it for "
        "drift with\n  MLINFRA_COLLECT_CREDENTIAL=<Azurite's well-known key> .venv/bin/mlinfra monitor drift "
        f"--collected {result.outputs['collected_to'].value} --baseline <training rows .npy> --out drift.html"
    )
    print(
        f"\nNext: MLINFRA_REGISTRY_CREDENTIAL=<Azurite's well-known key> .venv/bin/mlinfra models list "
        f"--registry '{result.outputs['registry'].value}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
