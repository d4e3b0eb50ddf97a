"""Data collection off the serving core: the collector (mlinfra_scoring.collector — JSON encoding, spool, upload)
runs in a process of its own beside the server, as Azure ML runs its collector, and the server only samples and
copies each record's bytes into a ring buffer in shared memory.

::

    request ─hook─▶ sample, pack (header + raw array bytes) ─▶ shared-memory ring ─▶ collector process:
                                                                                     decode ─▶ Collector (queue ▶
                                                                                     spool ▶ upload)

- The request path does no JSON encoding of tensors and no I/O: a keyed-hash sample, a small header, the arrays'
  bytes, one copy into the ring. A full ring drops the record and counts it (``mlinfra_collector_dropped_total``).
- The collector process moves itself to the CPUs the server is not pinned to (when there are any), so encoding and
  uploading no longer take the serving core's time. It reports drops, upload errors and its log lines back on a
  pipe, which the server turns into its metrics and log.
- Nothing is lost that the in-process collector would keep: the ring lives in the server's shared memory, so a
  collector process that dies is restarted and carries on from the last record it took; on shutdown the server
  stops taking records, the process empties the ring into the spool and uploads what it can in the time given; the
  spool (and its exactly-once uploads) is the same. If the server is killed, the process still empties the ring
  into the spool before it exits.

``MLINFRA_SERVE_COLLECT``'s ``"process": false`` keeps the collector in the server's process (threads).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra_scoring.collector import Collector, CollectorConfig, _dumps, new_salt, open_sink, sampled

try:
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

except ImportError:  # pragma: no cover

    def _loads(data: bytes) -> Any:
        return json.loads(data)


_HEAD = 64  # write position, read position, state — then the data
_WRAP = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OPEN, _CLOSING = 0, 1


class Ring:
    """A single-consumer byte ring in shared memory: frames of a 4-byte length and a payload. Producers serialize
    on a lock; positions only grow (offset = position % capacity)."""

    def __init__(self, shm: shared_memory.SharedMemory):
        self.shm = shm
        assert shm.buf is not None
        self.buf: memoryview = shm.buf
        self.cap = shm.size - _HEAD

    def _get(self, at: int) -> int:
        return int(_U64.unpack_from(self.buf, at)[0])

    def _set(self, at: int, value: int) -> None:
        _U64.pack_into(self.buf, at, value)

    @property
    def state(self) -> int:
        return self._get(16)

    @state.setter
    def state(self, value: int) -> None:
        self._set(16, value)

    def used(self) -> int:
        return self._get(0) - self._get(8)

    _write: int | None = None  # the producer's own copy of the write position (only it moves it)
    _read: int = 0  # the last read position seen: read again only when the ring looks full

    def put(self, payload: bytes) -> bool:
        """Append PAYLOAD (one producer at a time); False when it does not fit."""
        n = len(payload) + 4
        write = self._write if self._write is not None else self._get(0)
        off = write % self.cap
        pad = self.cap - off if self.cap - off < n else 0  # a frame never wraps: skip to the start
        if write + pad + n - self._read > self.cap:
            self._read = self._get(8)
            if write + pad + n - self._read > self.cap:
                return False
        if pad:
            if pad >= 4:
                _U32.pack_into(self.buf, _HEAD + off, _WRAP)
            write += pad
            off = 0
        _U32.pack_into(self.buf, _HEAD + off, len(payload))
        self.buf[_HEAD + off + 4 : _HEAD + off + n] = payload
        self._write = write + n
        self._set(0, write + n)  # published last: the consumer sees whole frames only
        return True

    def peek(self, limit: int) -> tuple[list[bytes], int]:
        """Up to LIMIT frames (copied) and the read position after them; nothing is consumed until
        :meth:`commit`."""
        write, read = self._get(0), self._get(8)
        frames: list[bytes] = []
        while read < write and len(frames) < limit:
            off = read % self.cap
            if self.cap - off < 4:
                read += self.cap - off
                continue
            (length,) = _U32.unpack_from(self.buf, _HEAD + off)
            if length == _WRAP:
                read += self.cap - off
                continue
            frames.append(bytes(self.buf[_HEAD + off + 4 : _HEAD + off + 4 + length]))
            read += 4 + length
        return frames, read

    def commit(self, read: int) -> None:
        self._set(8, read)

    def take(self, handle: Callable[[bytes], None], limit: int = 10000) -> int:
        """Hand up to LIMIT frames to HANDLE, consuming them; returns how many."""
        frames, read = self.peek(limit)
        for f in frames:
            handle(f)
        self.commit(read)
        return len(frames)


# -- records as bytes ---------------------------------------------------------------------------------------------


def pack(record: dict[str, Any], headers: list[str]) -> bytes:
    """A hook record → a compact JSON header (a list) and the arrays' raw bytes (object arrays go in the header as
    lists). About 3 µs for the reference MLP's record: this is all the request path pays."""
    tensors: list[list[Any] | None] = []
    blobs: list[bytes] = []
    for part in ("inputs", "outputs"):
        meta: list[Any] = []
        for name, a in (record.get(part) or {}).items():
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            if a.dtype.kind in "biuf":
                raw = a.tobytes()  # C order, whatever the layout
                meta.append((name, a.dtype.str, a.shape, len(raw)))
                blobs.append(raw)
            else:
                meta.append((name, None, a.shape, a.tolist()))
        tensors.append(meta if part in record else None)
    extra: dict[str, Any] | None = None
    if headers and record.get("headers"):
        hs = {k.lower(): v for k, v in record["headers"].items()}
        extra = {"headers": {h: hs[h] for h in headers if h in hs}}
    if "collection" in record:  # a scoring script's record (mlinfra_scoring.collection)
        extra = {
            **(extra or {}),
            "collection": record["collection"],
            "correlation_id": record.get("correlation_id"),
            "data": record.get("data"),
        }
    h = _dumps(
        [
            record.get("request_id"),
            record.get("model"),
            record.get("version"),
            record.get("ts"),
            *tensors,
            extra,
        ]
    )
    return _U32.pack(len(h)) + h + b"".join(blobs)


def unpack(payload: bytes | memoryview) -> dict[str, Any]:
    (n,) = _U32.unpack_from(payload, 0)
    rid, model, version, ts, inputs, outputs, extra = _loads(bytes(payload[4 : 4 + n]))
    record: dict[str, Any] = {
        "request_id": rid,
        "model": model,
        "version": version,
        "ts": ts,
        **(extra or {}),
    }
    pos = 4 + n
    for part, meta in (("inputs", inputs), ("outputs", outputs)):
        if meta is None:
            continue
        tensors = {}
        for name, dtype, shape, extra_ in meta:
            if dtype is None:
                tensors[name] = np.array(extra_, dtype=object).reshape(shape) if shape else extra_
                continue
            tensors[name] = np.frombuffer(bytes(payload[pos : pos + extra_]), dtype=np.dtype(dtype)).reshape(
                shape
            )
            pos += extra_
        record[part] = tensors
    return record


# -- the server's side ----------------------------------------------------------------------------------------------


class ProcessCollector:
    """The server's hook when collection runs in its own process; the same interface as Collector (``__call__``,
    ``close``, ``counts``, ``config``, ``sink``, ``pending``)."""

    def __init__(
        self,
        config: CollectorConfig,
        credential: str | None,
        on_drop: Callable[[str], None] = lambda _m: None,
        log: Callable[[dict[str, Any]], None] = lambda _e: None,
        on_upload_error: Callable[[], None] = lambda: None,
    ):
        self.config = config
        self.sink = open_sink(config.sink, credential)  # validates; describe() for the log (no I/O)
        self.on_drop, self.log, self.on_upload_error = on_drop, log, on_upload_error
        self.counts = {"sampled": 0, "dropped": 0, "spooled": 0, "uploaded": 0, "upload_errors": 0}
        self._salt = new_salt()
        self._headers = [h.lower() for h in config.headers]
        self._lock = threading.Lock()
        self._base: dict[str, int] = {}
        size = _HEAD + max(1 << 20, int(config.ring_mb * 1024 * 1024))
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        try:  # reserve the pages now: a full /dev/shm must fail here, not as SIGBUS on a request
            os.posix_fallocate(self._shm._fd, 0, size)  # type: ignore[attr-defined]
        except OSError:
            self._shm.close()
            self._shm.unlink()
            raise
        self._ring = Ring(self._shm)
        self._ring._set(0, 0)
        self._ring._set(8, 0)
        self._ring.state = _OPEN
        self._closed = False
        self._credential = credential
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()
        self._watch = threading.Thread(target=self._supervise, name="collector-supervisor", daemon=True)
        self._watch.start()

    def _start(self) -> None:
        env = {**os.environ}
        if self._credential:
            env["MLINFRA_SERVE_COLLECT_CREDENTIAL"] = self._credential
        cfg = {k: v for k, v in self.config.__dict__.items() if k not in ("process", "ring_mb")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mlinfra_scoring.collector_process", self._shm.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"config": cfg, "server_pid": os.getpid()}).encode() + b"\n")
        self._proc.stdin.close()
        threading.Thread(
            target=self._events, args=(self._proc,), name="collector-events", daemon=True
        ).start()

    def _events(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if "drop" in e:
                    self.counts["dropped"] += 1
                    self.on_drop(str(e["drop"]))
                elif "upload_error" in e:
                    self.on_upload_error()
                elif "counts" in e:
                    for k in ("spooled", "uploaded", "upload_errors"):
                        self.counts[k] = int(e["counts"].get(k, 0)) + self._base.get(k, 0)
                elif "event" in e:
                    self.log(e)

    def _supervise(self) -> None:
        """Restart the collector process if it dies while the server runs (the ring keeps what it had not taken)."""
        while not self._closed:
            time.sleep(0.5)
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._closed:
                self._base = {k: self.counts[k] for k in ("spooled", "uploaded", "upload_errors")}
                self.log({"event": "collector_process_restarted", "exit_code": proc.returncode})
                self._start()

    # -- the request path ---------------------------------------------------------------------------------------

    def __call__(self, record: dict[str, Any]) -> None:
        if self._closed or not sampled(
            str(record.get("request_id", "")), self.config.sample_rate, self._salt
        ):
            return
        self.counts["sampled"] += 1
        payload = pack(record, self._headers)
        with self._lock:
            ok = self._ring.put(payload)
        if not ok:
            self.counts["dropped"] += 1
            self.on_drop(str(record.get("model", "")))

    # -- shutdown -----------------------------------------------------------------------------------------------

    def pending(self) -> list[Path]:
        spool = self.config.spool_path()
        return sorted(p for p in spool.rglob("*.jsonl") if p.is_file()) if spool.is_dir() else []

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking records; the process empties the ring into the spool, uploads for up to TIMEOUT s, exits."""
        if self._closed:
            return
        self._closed = True
        self._ring.state = _CLOSING
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=timeout + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            self._shm.close()
            self._shm.unlink()


# -- the collector process ------------------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _off_the_server_cpus(server_pid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        mine = os.sched_getaffinity(0)
        server = os.sched_getaffinity(server_pid)
        others = mine - server if mine - server else set(range(os.cpu_count() or 1)) - server
        if others:
            os.sched_setaffinity(0, others)


def main(shm_name: str) -> int:
    start = json.loads(sys.stdin.readline())
    config = CollectorConfig(**{**start["config"], "sample_rate": 1.0})  # the server sampled already
    sink = open_sink(config.sink, os.environ.get("MLINFRA_SERVE_COLLECT_CREDENTIAL"))
    server_pid = int(start["server_pid"])
    _off_the_server_cpus(server_pid)
    collector = Collector(
        config,
        sink,
        on_drop=lambda model: _emit({"drop": model}),
        log=_emit,
        on_upload_error=lambda: _emit({"upload_error": 1}),
    )
    shm = shared_memory.SharedMemory(name=shm_name)
    with contextlib.suppress(Exception):  # the server owns (and unlinks) the segment
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    ring = Ring(shm)
    # Records leave the ring only once they are in the spool (fsync'd): a collector process that is killed loses
    # nothing (its successor takes them again; one that dies between the spool write and the commit can write that
    # batch twice). The spool files then go up exactly once, as in-process.
    last_write = last_counts = time.monotonic()
    while True:
        closing = ring.state == _CLOSING or not _alive(server_pid)
        due = time.monotonic() - last_write >= config.flush_s or ring.used() > ring.cap // 2
        if due or closing:
            while True:
                frames, read = ring.peek(config.batch)
                if not frames:
                    ring.commit(read)  # skip a trailing wrap marker
                    break
                batch = []
                for f in frames:
                    try:
                        batch.append(unpack(f))
                    except Exception as e:  # a record that cannot be decoded: counted, never fatal
                        _emit({"drop": "unknown"})
                        _emit(
                            {"event": "collector_bad_record", "error": f"{type(e).__name__}: {str(e)[:200]}"}
                        )
                try:
                    collector.spool_now(batch)
                except OSError as e:  # disk trouble: count the loss, keep going
                    for r in batch:
                        _emit({"drop": str(r.get("model", ""))})
                    _emit({"event": "collector_spool_error", "error": str(e)})
                ring.commit(read)
            last_write = time.monotonic()
            if closing:
                break
        if time.monotonic() - last_counts > 1:
            _emit({"counts": collector.counts})
            last_counts = time.monotonic()
        time.sleep(min(0.01, config.flush_s / 4))
    collector.close()
    _emit({"counts": collector.counts})
    with contextlib.suppress(Exception):
        shm.close()
    return 0


def _alive(pid: int) -> bool:
    """Whether the server that started this process still runs (when it dies, this one is re-parented)."""
    return os.getppid() == pid


__all__ = ["ProcessCollector", "Ring", "pack", "unpack"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
