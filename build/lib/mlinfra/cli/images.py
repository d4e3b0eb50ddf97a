"""`mlinfra images list`: scoring images in an OCI registry, with the model versions each one holds."""

from __future__ import annotations

import argparse
import json

from mlinfra import defaults
from mlinfra.images.builder import list_images


def cmd_list(args: argparse.Namespace) -> int:
    images = list_images(args.registry or defaults.registry_url(), args.model)
    if args.json:
        print(json.dumps(images, indent=1))
        return 0
    print(f"{'IMAGE':80s} MODELS")
    for img in images:
        models = ", ".join(f"{m['name']}:{m['version']}" for m in img["models"])
        print(f"{img['image_ref']:80s} {models}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    images = sub.add_parser("images", help="list scoring images in an OCI registry")
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    p = isub.add_parser("list", help="images built by mlinfra (optionally those holding --model NAME)")
    p.add_argument("--registry", help="registry URL (default: the local registry, http://127.0.0.1:5000)")
    p.add_argument("--model", help="only images that hold this model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
