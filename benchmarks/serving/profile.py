"""A flame graph of the scoring server's hot path under load (issue 19: "a profile of the hot path before and after").

Starts `mlinfra serve` on the reference MLP (64→256→10) pinned to CPU 0, drives it with wrk (one thread, CPU 1) at
--conns connections with one-row OIP v2 JSON bodies, and samples it with py-spy (blocking samples, so stacks are whole; `--gil`: only the thread holding the GIL, so idle workers are left out and ONNX Runtime's run, which releases it, shows only its Python part; `--native` off: the Python stacks
are the point; C frames show as their Python callers) for --duration seconds. Writes an SVG flame graph and a text
summary of the hottest frames (own time, and time including callees) next to this file.

Usage: .venv/bin/python benchmarks/serving/profile.py [--conns 32] [--duration 10] [--binary] [--rev REV]
[--out profile-after] [-- extra serve flags]

Issue 19: `--rev 8b163a5 --out profile-before` and `--out profile-after` (one row, 32 connections, JSON).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving.ab import runtime_at  # noqa: E402
from benchmarks.serving.bench import body, free_port, mlinfra_command, wait_ready  # noqa: E402
from benchmarks.serving.protocols import bodies  # noqa: E402
from benchmarks.wrk import run as wrk_run  # noqa: E402
from mlinfra.lab.samples import write_mlp  # noqa: E402


def summary(collapsed: Path, top: int = 25) -> str:
    """The hottest frames from py-spy's collapsed stacks: own samples and inclusive samples, as % of all."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"{total} samples", "", "own %  | frame", "---|---"]
    lines += [f"{100 * c / total:5.1f} | {f}" for f, c in own.most_common(top)]
    lines += ["", "incl % | frame", "---|---"]
    lines += [f"{100 * c / total:5.1f} | {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--binary", action="store_true", help="bodies in the binary tensor extension (one row)")
    p.add_argument(
        "--rev", default="", help="profile the scoring server of this git revision (default: the tree)"
    )
    p.add_argument("--out", default="profile")
    p.add_argument("serve_args", nargs="*", help="extra flags for mlinfra serve (after --)")
    args = p.parse_args()
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        sys.exit(f"py-spy not found at {pyspy}: pip install the dev extras (pip install -e '.[dev]')")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_mlp(work / "mlp.onnx")
        b, header_length = work / "body.json", None
        b.write_bytes(body(args.rows))
        if args.binary:
            b, header_length = bodies(work)["rest-binary"]
        port = free_port()
        src = runtime_at(args.rev, work / "rev") if args.rev else REPO
        env = {**os.environ, "PYTHONPATH": str(src / "components" / "scoring")}
        server = subprocess.Popen(
            ["taskset", "-c", "0", *mlinfra_command(model, port), *args.serve_args],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_ready(port, (work / "body.json").read_bytes(), server)
            url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
            wrk_run(url, b, args.conns, 2, binary_header_length=header_length)  # warm-up
            result: dict = {}
            load = threading.Thread(
                target=lambda: result.update(
                    wrk_run(url, b, args.conns, args.duration + 2, binary_header_length=header_length)
                )
            )
            load.start()
            collapsed = work / "stacks.txt"
            svg = HERE / f"{args.out}.svg"
            for fmt, dest in (("raw", collapsed), ("flamegraph", svg)):
                subprocess.run(
                    [
                        "taskset", "-c", "1", str(pyspy), "record", "--pid", str(server.pid), "--rate", "250",
                        "--duration", str(args.duration // 2), "--format", fmt, "--output", str(dest), "--gil",
                    ],
                    check=True,
                    capture_output=True,
                )  # fmt: skip
            load.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
        text = (
            f"# Hot path profile: {args.out}\n\n{args.rows} row(s) per request, {args.conns} connections, "
            f"server flags {args.serve_args or 'defaults'}, runtime {args.rev or 'of the working tree'}; wrk alongside: {result.get('rps', 0):,.0f} rps "
            f"(py-spy's sampling slows the server: read the shares, not the rate).\n\n" + summary(collapsed)
        )
        (HERE / f"{args.out}.md").write_text(text)
        print(text)
        print(f"wrote {svg}")


if __name__ == "__main__":
    main()
