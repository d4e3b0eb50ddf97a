"""Registration with signing vs without, side by side in one run (issue 20).

Registers a 1 GiB file in Azurite three ways, each in a fresh subprocess with a cold hash cache, alternated, median
of N:

- ``register``: `ModelRegistry.register` (what `mlinfra models register` does without --signing-key);
- ``register+sign``: the same, then `sign_version` with a P-256 key (`--signing-key`, RegisteredModel(signing_key=));
- ``register+upstream sign``: the same registration, then upstream model-signing's own `sign` on the file (it hashes
  the bytes again) — what signing costs when the statement is not made from the registry's record.

Goal: register+sign ≤ 1.1 times the time of register.

Usage: .venv/bin/python benchmarks/registry/signing.py [--reps 3] [--out benchmarks/registry/SIGNING.md]
Needs `make setup services` (Azurite). Writes figures with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from bench import _drop_container, make_file, run_child  # noqa: E402

from mlinfra.lab import services  # noqa: E402

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from mlinfra.lab import services
from mlinfra.registry import ModelRegistry
reg = ModelRegistry("azblob://devstoreaccount1/{container}?endpoint=" + services.azurite_blob_url(), services.AZURITE_KEY)
reg.store.check()
key = Path({key!r}).read_text()
t = time.perf_counter()
mv, _ = reg.register("big", {path!r}, framework="custom")
registered = time.perf_counter() - t
if {kind!r} == "register+sign":
    from mlinfra.registry.signing import sign_version
    sign_version(reg, mv.name, mv.version, key)
elif {kind!r} == "register+upstream sign":
    import model_signing
    with tempfile.TemporaryDirectory() as tmp:
        model_signing.signing.Config().use_elliptic_key_signer(private_key={key!r}).sign({path!r}, Path(tmp) / "b.json")
print(json.dumps({{"seconds": time.perf_counter() - t, "register_s": registered}}))
"""

KINDS = ("register", "register+sign", "register+upstream sign")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("SIGNING.md")))
    args = ap.parse_args()
    services.ensure(["azurite"], progress=lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="mlinfra-bench-signing-"))
    try:
        from tests.signing_helpers import ec_keypair

        key = work / "key.pem"
        key.write_text(ec_keypair()[0])
        model = work / "model-1g.bin"
        make_file(model, 1 << 30, 7)
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        for i in range(args.reps):
            for kind in KINDS:
                container = f"benchsign{i}{KINDS.index(kind)}{os.getpid()}"
                env = {**os.environ, "MLINFRA_CACHE": str(work / f"cache-{i}-{KINDS.index(kind)}")}
                code = CHILD.format(
                    repo=str(REPO), container=container, path=str(model), key=str(key), kind=kind
                )
                r = run_child(code, env)
                runs[kind].append(r)
                print(f"  1 GiB {kind:22s} rep {i + 1}: {r['seconds']:.2f} s", flush=True)
                _drop_container(container)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} — {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "median_s": med,
        "ratio_sign": med["register+sign"] / med["register"],
        "ratio_upstream": med["register+upstream sign"] / med["register"],
        "runs": runs,
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(data, indent=1))
    Path(args.out).write_text(f"""# Registration with signing vs without

Measured {data["date"]} on {data["machine"]} (shared, noisy: read the ratios). Script: `signing.py`, {args.reps}
alternating repetitions, medians; a 1 GiB file registered in Azurite on the same machine, fresh process and cold
hash cache each time.

| measure | seconds | vs register | goal |
|---|---|---|---|
| register | {med["register"]:.2f} | 1.00× | |
| register + sign (mlinfra: statement from the record) | {med["register+sign"]:.2f} | **{data["ratio_sign"]:.3f}×** | ≤ 1.1× |
| register + upstream `model_signing` sign (hashes the file again) | {med["register+upstream sign"]:.2f} | {data["ratio_upstream"]:.2f}× | |

mlinfra signs the statement it builds from the version's record: every file's sha256 is already known (registration
hashed it, and every download checks it), so signing costs one ECDSA signature and one small blob, whatever the
model's size. Upstream's own `sign` reads every byte again.
""")
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
