"""The native gRPC front end (components/grpcfront, mlinfra-grpcfront) started by the real scoring server: concurrent
calls merged with every caller getting its own rows, counted as calls; the loopback route it uses closed to anyone
without its token (kept off command lines); a model without a batch axis answered call by call; a killed front end
restarted; a wrong --grpc-frontend refused. test_grpc.py runs the protocol's behaviour against both front ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mlinfra.lab.samples import write_mlp
from tests.conftest import GRPC_FRONTEND
from tests.scoring_helpers import Server, free_port, metric, reference, start_server

KEY = "front-key"
AUTH = (("authorization", f"Bearer {KEY}"),)


def serve(tmp: Path, model: Path, *extra: str) -> Server:
    assert GRPC_FRONTEND is not None, "mlinfra-grpcfront did not build: run make setup"
    port = free_port()
    srv = start_server(
        tmp, "--model", str(model), "--name", "mlp", "--key", KEY, "--grpc-port", str(port), *extra,
        env={"MLINFRA_SERVE_GRPC_FRONTEND": str(GRPC_FRONTEND)},
    )  # fmt: skip
    srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    return srv


def frontend_pid(srv: Server) -> int:
    children = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    for pid in children:
        if Path(f"/proc/{pid}/exe").resolve().name.startswith("mlinfra-grpcfront"):
            return int(pid)
    raise AssertionError(f"no mlinfra-grpcfront among the server's children {children}")


def request(rows: np.ndarray) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    req.raw_input_contents.append(rows.tobytes())
    return req


def hammer(srv: Server, model: Path, threads: int = 16, calls: int = 30) -> int:
    """THREADS callers, CALLS calls each, of 1-3 random rows each; asserts every answer is its own rows' → calls made."""
    wrong: list[str] = []
    with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def caller(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for i in range(calls):
                rows = rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32)
                resp = stub.ModelInfer(request(rows), metadata=AUTH, timeout=30)
                got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(
                    list(resp.outputs[0].shape)
                )
                if got.shape != (len(rows), 10) or not np.allclose(
                    got, reference(model, rows), rtol=1e-5, atol=1e-6
                ):
                    wrong.append(f"caller {seed} call {i}: shape {got.shape}")

        workers = [threading.Thread(target=caller, args=(s,)) for s in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert not wrong, wrong[:5]
    return threads * calls


def test_concurrent_calls_are_merged_and_each_caller_gets_its_own_rows(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    srv = serve(tmp_path, model)
    try:
        calls = hammer(srv, model)
        text = srv.request("GET", "/metrics")[1]
        counted = metric(
            text, "mlinfra_requests_total", route="grpc_model_infer", model="mlp", version="1", code="200"
        )
        assert counted == calls, f"every merged call counts as the calls it stands for: {counted} != {calls}"
        merged = metric(text, "mlinfra_grpc_merged_calls_total") or 0
        # How many merge depends on how the callers' threads interleave (one run in many merged 23 %): without
        # merging it is 0.
        assert merged > calls / 10, f"only {merged} of {calls} concurrent calls were merged by the front end"
        runs = metric(text, "mlinfra_batch_size_count", model="mlp", version="1")
        assert runs is not None and runs < calls * 0.8, (
            f"{runs} model runs for {calls} concurrent calls: not merged"
        )
        assert (
            metric(
                text,
                "mlinfra_request_duration_seconds_count",
                route="grpc_model_infer",
                model="mlp",
                version="1",
            )
            == calls
        )
    finally:
        assert srv.stop() == 0


def test_a_bad_call_among_merged_ones_gets_its_own_error(tmp_path: Path) -> None:
    """While callers keep the front end merging, calls the server must refuse (contents beside raw contents, a size
    that does not match the shape) still get INVALID_ARGUMENT with the server's message, and good ones their rows."""
    model = write_mlp(tmp_path / "mlp.onnx")
    srv = serve(tmp_path, model)
    try:
        busy = threading.Thread(target=hammer, args=(srv, model, 8, 40))
        busy.start()
        both = request(np.ones((1, 64), np.float32))
        both.inputs[0].contents.fp32_contents.extend([0.0] * 64)
        short = request(np.ones((1, 64), np.float32))
        short.raw_input_contents[0] = bytes(100)
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for bad, message in [
                (both, "has contents, but the request carries"),
                (short, "binary_data_size is 100"),
            ] * 10:
                with pytest.raises(grpc.RpcError) as e:
                    stub.ModelInfer(bad, metadata=AUTH, timeout=30)
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in (
                    e.value.details() or ""
                )
        busy.join()
    finally:
        assert srv.stop() == 0


def test_a_model_without_a_batch_axis_is_answered_call_by_call(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "fixed.onnx", batch=1)  # input [1, 64]: rows cannot be merged
    srv = serve(tmp_path, model)
    try:
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            results: list[bool] = []

            def caller(seed: int) -> None:
                rows = np.random.default_rng(seed).standard_normal((1, 64)).astype(np.float32)
                for _ in range(20):
                    resp = stub.ModelInfer(request(rows), metadata=AUTH, timeout=30)
                    got = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape(1, 10)
                    results.append(bool(np.allclose(got, reference(model, rows), rtol=1e-5, atol=1e-6)))

            workers = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        assert len(results) == 160 and all(results)
        text = srv.request("GET", "/metrics")[1]
        # Merging was tried and given up for this model: after the first failed merges, calls go one by one.
        assert (metric(text, "mlinfra_grpc_merged_calls_total") or 0) < 40, "the lane should stop merging"
        assert (
            metric(
                text, "mlinfra_requests_total", route="grpc_model_infer", model="mlp", version="1", code="200"
            )
            == 160
        )
        assert metric(text, "mlinfra_batch_size_bucket", model="mlp", version="1", le="1.0") == metric(
            text, "mlinfra_batch_size_count", model="mlp", version="1"
        ), "a fixed-batch model only ever runs one row"
    finally:
        assert srv.stop() == 0


def test_the_loopback_route_answers_only_the_front_end_and_its_token_stays_off_command_lines(
    tmp_path: Path,
) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    srv = serve(tmp_path, model)
    try:
        body = request(np.zeros((1, 64), np.float32)).SerializeToString()
        url = f"http://127.0.0.1:{srv.port}/_mlinfra/grpc/ModelInfer"
        # Without the token it is a route like any unknown one: 401 without a key (as every route), 404 with one.
        for headers, code in (
            ({}, 401),
            ({"Authorization": f"Bearer {KEY}"}, 404),
            ({"Authorization": f"Bearer {KEY}", "X-Mlinfra-Front": "guess"}, 404),
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10)
            assert e.value.code == code, (headers, e.value.code)
        pid = frontend_pid(srv)
        environ = dict(
            kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv
        )
        token = environ["MLINFRA_GRPCFRONT_TOKEN"]
        assert len(token) >= 32
        for p in (pid, srv.proc.pid):
            assert token not in Path(f"/proc/{p}/cmdline").read_text(), (
                f"the token is on process {p}'s command line"
            )
        assert token not in srv.log.read_text()
        # With the token the route runs the call as gRPC does: the key is still checked.
        ok = urllib.request.Request(
            url, data=body, headers={"X-Mlinfra-Front": token, "Authorization": f"Bearer {KEY}"}
        )
        with urllib.request.urlopen(ok, timeout=10) as r:
            assert service_pb2.ModelInferResponse.FromString(r.read()).outputs[0].name == "probabilities"
        keyless = urllib.request.Request(url, data=body, headers={"X-Mlinfra-Front": token})
        with urllib.request.urlopen(keyless, timeout=10) as r:
            assert r.headers["Grpc-Status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    finally:
        assert srv.stop() == 0


def test_calls_the_front_end_refuses_past_max_queue_are_counted_by_the_server(tmp_path: Path) -> None:
    """The front end bounds the calls it holds by --max-queue and refuses the rest at once, as the server does; the
    server's /metrics counts them (mlinfra_requests_shed_total, and 503s of ModelInfer) — here while the server is
    stopped (SIGSTOP), so only the front end can be refusing."""
    model = write_mlp(tmp_path / "mlp.onnx")
    srv = serve(tmp_path, model, "--max-queue", "4")
    rows = np.ones((1, 64), np.float32)
    answers: list[object] = []
    try:
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=10).outputs
            os.kill(srv.proc.pid, signal.SIGSTOP)  # the server this test started
            try:

                def held() -> None:
                    try:
                        answers.append(
                            stub.ModelInfer(request(rows), metadata=AUTH, timeout=60).outputs[0].name
                        )
                    except grpc.RpcError as e:
                        answers.append(e.code())

                waiting = [threading.Thread(target=held) for _ in range(4)]
                for t in waiting:
                    t.start()
                time.sleep(1.0)  # the four are held in the front end: it takes no more
                for _ in range(3):
                    t0 = time.monotonic()
                    with pytest.raises(grpc.RpcError) as e:
                        stub.ModelInfer(request(rows), metadata=AUTH, timeout=10)
                    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
                    assert "--max-queue" in (e.value.details() or "") and time.monotonic() - t0 < 2
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
            for t in waiting:
                t.join(60)
            assert answers == ["probabilities"] * 4, answers
            assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=10).outputs  # served again
            # A caller cannot report sheds: the front end drops its own headers from callers' metadata.
            forged = (*AUTH, ("x-mlinfra-shed", "1000"))
            assert stub.ModelInfer(request(rows), metadata=forged, timeout=10).outputs
        text = srv.request("GET", "/metrics")[1]
        infer = {"route": "grpc_model_infer"}
        assert metric(text, "mlinfra_requests_shed_total") == 3, text
        assert (
            metric(text, "mlinfra_requests_total", **infer, model="unknown", version="", code="503") == 3
        ), text
        assert metric(text, "mlinfra_requests_total", **infer, model="mlp", version="1", code="200") == 7, (
            text
        )
    finally:
        assert srv.stop() == 0


def test_a_metadata_entry_the_servers_http_parser_would_refuse_is_refused_by_the_front_end(
    tmp_path: Path,
) -> None:
    """One entry of 9,000 bytes is under grpcio's 16 KiB in all, but over the 8,190-byte header line the server's
    HTTP parser takes: the front end answers RESOURCE_EXHAUSTED naming the entry and the limit, rather than passing it
    on to fail there (an INTERNAL error quoting a parser and a traceback in the server's log)."""
    srv = serve(tmp_path, write_mlp(tmp_path / "mlp.onnx"))
    try:
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            rows = np.ones((1, 64), np.float32)
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request(rows), metadata=(*AUTH, ("x-big", "a" * 9000)), timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
            assert '"x-big"' in (e.value.details() or "") and "8000 per entry" in (e.value.details() or "")
            assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=10).outputs
        assert "Traceback" not in srv.log.read_text()
    finally:
        assert srv.stop() == 0


def test_the_front_end_bounds_and_times_out_client_connections_as_the_rest_port_does(tmp_path: Path) -> None:
    """--max-connections and --idle-timeout-s hold on the gRPC port too: connections past the bound are closed as they
    arrive, and connections that never complete an HTTP/2 handshake are closed after the idle timeout — a client
    holds no connection it does not use — while a real client is served throughout."""
    import socket

    srv = serve(tmp_path, write_mlp(tmp_path / "mlp.onnx"), "--max-connections", "3", "--idle-timeout-s", "1")
    host, port = srv.grpc.rsplit(":", 1)  # type: ignore[attr-defined]
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection((host, int(port)), timeout=10)
        t0 = time.monotonic()
        assert extra.recv(100) == b"" and time.monotonic() - t0 < 1.0, (
            "a connection past the bound stays open"
        )
        extra.close()
        for s in silent:  # closed by the server after the idle timeout (1 s), not held
            t0 = time.monotonic()
            while s.recv(4096):  # the server's HTTP/2 settings, then EOF
                pass
            assert time.monotonic() - t0 < 5
        rows = np.ones((1, 64), np.float32)
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=10).outputs
    finally:
        for s in silent:
            s.close()
        assert srv.stop() == 0


def test_a_front_end_that_dies_is_restarted(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    srv = serve(tmp_path, model)
    try:
        rows = np.ones((1, 64), np.float32)
        with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=10).outputs
            os.kill(frontend_pid(srv), signal.SIGKILL)  # a child of the server this test started
        deadline = time.monotonic() + 10
        while True:
            try:
                with grpc.insecure_channel(srv.grpc) as channel:  # type: ignore[attr-defined]
                    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                    assert stub.ModelInfer(request(rows), metadata=AUTH, timeout=2).outputs
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the front end did not come back"
                time.sleep(0.2)
        assert '"event": "grpc_frontend_exited"' in srv.log.read_text()
        assert srv.request("GET", "/v2/health/ready")[0] == 200
    finally:
        assert srv.stop() == 0


def test_a_wrong_frontend_path_is_refused_with_the_flag_named(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "mlp.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "mlinfra_scoring", "--model", str(model), "--grpc-port", str(free_port()),
         "--grpc-frontend", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--grpc-frontend" in done.stderr and "is not an executable file" in done.stderr, done.stderr


def test_the_front_ends_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """components/grpcfront/oippb/oip.pb.go is what `make proto` makes from oip.proto (protoc-gen-go at the
    protobuf version in the front end's go.mod)."""
    front = Path(__file__).parents[3] / "components" / "grpcfront"
    version = next(
        line.split()[-1]
        for line in (front / "go.mod").read_text().splitlines()
        if "google.golang.org/protobuf" in line
    )
    subprocess.run(
        ["go", "install", f"google.golang.org/protobuf/cmd/protoc-gen-go@{version}"],
        env={**os.environ, "GOBIN": str(tmp_path)}, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    oip = front.parent / "scoring" / "mlinfra_scoring" / "oip"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{oip}", f"--plugin=protoc-gen-go={tmp_path / 'protoc-gen-go'}",
         f"--go_out={tmp_path}", "--go_opt=paths=source_relative", "--go_opt=Moip.proto=mlinfra.local/grpcfront/oippb",
         "oip.proto"],
        check=True,
    )  # fmt: skip
    assert (tmp_path / "oip.pb.go").read_text() == (front / "oippb" / "oip.pb.go").read_text(), (
        "components/grpcfront/oippb/oip.pb.go is stale: run `make proto`"
    )
