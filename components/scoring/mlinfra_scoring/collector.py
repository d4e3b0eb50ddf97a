"""Data collection for the scoring server: sampled inputs/outputs written to blob storage as JSON Lines, without ever
making a request wait on storage, without losing or duplicating records when storage is down.

The path of a record::

    request ─hook─▶ bounded queue ─writer thread─▶ spool file on local disk ─uploader thread─▶ blob

- The hook (on the request path) only samples (by a keyed hash of the request id, so a retried request decides alike and a client cannot steer it)
  and enqueues; a full queue drops the record and counts it (``mlinfra_collector_dropped_total``).
- The writer turns queued records into JSON Lines every ``flush_s`` (or ``batch`` records), one spool file per
  partition, written atomically (temp + rename) under the blob layout
  ``{endpoint}/{deployment}/{model}/{version}/{yyyy}/{MM}/{dd}/{HH}/{time}-{uuid}.jsonl``.
- The uploader sends spool files oldest first with a *put* of that exact name, and deletes the spool file only after
  the put succeeded. Storage down → files wait on disk (bounded by ``spool_max_mb``; beyond it new records are
  dropped and counted) and go when it is back. A crash between the put and the delete re-puts the same name later:
  the blob is overwritten with identical bytes — nothing duplicated. A restart (even after kill -9) finds the spool
  and sends it; only records still in memory (< ``flush_s``) are lost to a kill -9.

Sinks: Azure Blob with a SAS token (plain HTTPS/HTTP PUT, no SDK needed in images) or a local folder.
Configured from ``MLINFRA_SERVE_COLLECT`` (JSON) and ``MLINFRA_SERVE_COLLECT_CREDENTIAL`` (the SAS token).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import json
import os
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class CollectorConfigError(ValueError):
    pass


@dataclass
class CollectorConfig:
    sink: str  # azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL or file:///abs/folder
    endpoint: str = "local"
    deployment: str = "default"
    sample_rate: float = 1.0
    capture: list[str] = field(default_factory=lambda: ["inputs", "outputs"])
    headers: list[str] = field(default_factory=list)
    spool_dir: str = ""  # default: a folder private to this user, <tmp>/mlinfra-spool-<uid> (mode 0700)
    spool_max_mb: float = 256.0
    queue_max: int = 10000
    batch: int = 1000
    flush_s: float = 1.0
    process: bool = True
    """Run the collector in a process of its own, off the serving core (collector_process.py); False: threads in
    the server's process."""
    ring_mb: float = 16.0
    """With ``process``: the shared-memory ring between the server and the collector process (in /dev/shm)."""

    def spool_path(self) -> Path:
        """``spool_dir``, or this user's private default."""
        return Path(self.spool_dir or Path(tempfile.gettempdir()) / f"mlinfra-spool-{os.getuid()}")

    @staticmethod
    def from_json(text: str) -> CollectorConfig:
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise CollectorConfigError(f"MLINFRA_SERVE_COLLECT is not JSON: {e}") from None
        if not isinstance(raw, dict) or "sink" not in raw:
            raise CollectorConfigError('MLINFRA_SERVE_COLLECT must be a JSON object with "sink"')
        known = set(CollectorConfig.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CollectorConfigError(
                f"MLINFRA_SERVE_COLLECT has unknown key(s) {unknown}; known: {sorted(known)}"
            )
        c = CollectorConfig(**raw)
        if not 0 <= float(c.sample_rate) <= 1:
            raise CollectorConfigError(f"sample_rate = {c.sample_rate} must be in [0, 1]")
        bad = sorted(set(c.capture) - {"inputs", "outputs"})
        if bad:
            raise CollectorConfigError(f"capture has {bad}: choose from 'inputs', 'outputs'")
        return c


def private_dir(path: Path) -> Path:
    """PATH as a folder only this user can enter: created 0700, an existing one of ours made 0700. In a folder
    anyone may write to (a shared /tmp) it must be ours and not a symlink: another user's folder there could be read,
    or filled with links, by them. A mounted volume (a Kubernetes emptyDir, a host folder) may belong to root."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    shared_parent = bool(os.stat(path.parent).st_mode & stat.S_IWOTH)
    if (
        stat.S_ISLNK(st.st_mode)
        or not stat.S_ISDIR(st.st_mode)
        or (shared_parent and st.st_uid != os.getuid())
    ):
        raise CollectorConfigError(
            f"spool folder {path} is not a folder of this user (uid {os.getuid()}) in shared {path.parent}: choose "
            "another spool_dir"
        )
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def new_salt() -> bytes:
    """A per-server secret for sampling decisions."""
    return os.urandom(16)


def sampled(request_id: str, rate: float, salt: bytes) -> bool:
    """By a keyed hash of the request id: the same request is always in or out on this server (a retry decides
    alike), and a client that chooses its request ids cannot choose what is captured (the key is the server's)."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8, key=salt).digest(), "big")
    return h / 2**64 < rate


# ----------------------------------------------------------------------------------------------------------------
# Sinks


class SinkError(RuntimeError):
    pass


MAX_FILE_BYTES = 256 << 20
"""The most a file or blob read back from a sink may hold (a record file, a monitor's baseline or index). The writer's
files are far smaller (one per flush); a larger one was put there by something else, and reading it whole could
exhaust the reader's memory, so it is refused (:class:`Oversized`) and its reader skips it."""


class Oversized(SinkError):
    def __init__(self, where: str, size: int):
        super().__init__(
            f"{where} holds {size} bytes, over the {MAX_FILE_BYTES >> 20} MiB a file read back may hold"
        )
        self.size = size


def join_at_most(blocks: Iterable[bytes], where: str, size: Callable[[], int | None] | None = None) -> bytes:
    """BLOCKS joined, read no further than MAX_FILE_BYTES: as soon as they pass it, :class:`Oversized` naming WHERE
    with the whole size when SIZE() tells it, else the bytes read so far. For readers that get a file or blob in
    blocks (a store's reader, a blob download's chunks)."""
    data = bytearray()
    for block in blocks:
        data += block
        if len(data) > MAX_FILE_BYTES:
            raise Oversized(where, (size() if size else None) or len(data))
    return bytes(data)


class FolderSink:
    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, name: str) -> Path:
        target = (self.root / name).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise SinkError(f"{self.describe()}: {name!r} is outside the folder")
        return target

    def put(self, name: str, data: bytes, content_type: str = "") -> None:
        target = self._path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as e:
            raise SinkError(f"{self.describe()}: {e}") from None

    def get(self, name: str) -> bytes | None:
        """The file's bytes; None when there is none; Oversized past MAX_FILE_BYTES."""
        try:
            with self._path(name).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise Oversized(f"{self.describe()}/{name}", self._path(name).stat().st_size)
            return data
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SinkError(f"{self.describe()}: {e}") from None

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        """(name, modified time in epoch seconds) of each file whose name starts with PREFIX, sorted by name;
        files being written (``.*.part``) are left out."""
        if not self.root.is_dir():
            raise SinkError(f"{self.describe()}: no such folder")
        out = []
        for p in self.root.rglob("*"):
            if p.name.startswith(".") or not p.is_file():
                continue
            rel = p.relative_to(self.root).as_posix()
            if rel.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    out.append((rel, p.stat().st_mtime))
        return sorted(out)


class BlobSink:
    """Put Blob with a SAS token (service or container SAS with create/write)."""

    def __init__(self, account: str, container: str, prefix: str, endpoint: str, sas: str):
        self.account, self.container, self.prefix = account, container, prefix.strip("/")
        self.base = endpoint.rstrip("/")
        self.sas = sas.lstrip("?")

    def describe(self) -> str:
        return f"azblob://{self.account}/{self.container}"  # never the SAS

    def _call(
        self,
        what: str,
        url: str,
        method: str = "GET",
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit: int | None = None,
    ) -> bytes | None:
        """One request to the Blob service; its body, or None on 404 (GET); Oversized past LIMIT bytes. Errors name
        the blob, never the SAS."""
        req = urllib.request.Request(
            url, data=data, method=method, headers={"x-ms-version": "2021-08-06", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status not in (200, 201):
                    raise SinkError(f"{self.describe()}: {what} answered {r.status}")
                if limit is None:
                    body: bytes = r.read()
                    return body
                where = f"{self.describe()}/{what.removeprefix('get ')}"
                size = int(r.headers.get("Content-Length") or 0)
                if size > limit:  # said up front: nothing is read
                    raise Oversized(where, size)
                body = r.read(limit + 1)
                if len(body) > limit:  # no Content-Length, or a wrong one
                    raise Oversized(where, len(body))
                return body
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET" and what.startswith("get "):
                return None
            raise SinkError(f"{self.describe()}: {what} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise SinkError(f"{self.describe()}: unreachable ({getattr(e, 'reason', e)})") from None
        except http.client.HTTPException as e:  # a reply that is not HTTP, a truncated one
            raise SinkError(
                f"{self.describe()}: not an HTTP answer ({type(e).__name__}: {str(e)[:200]})"
            ) from None

    def _url(self, name: str) -> str:
        path = "/".join(p for p in (self.prefix, name) if p)
        return f"{self.base}/{self.container}/{urllib.parse.quote(path)}?{self.sas}"

    def put(self, name: str, data: bytes, content_type: str = "application/x-ndjson") -> None:
        self._call(
            f"put {name}",
            self._url(name),
            "PUT",
            data,
            {"x-ms-blob-type": "BlockBlob", "Content-Type": content_type},
        )

    def get(self, name: str) -> bytes | None:
        """The blob's bytes (the SAS needs read); None when there is none; Oversized past MAX_FILE_BYTES."""
        return self._call(f"get {name}", self._url(name), limit=MAX_FILE_BYTES)

    def list(self, prefix: str = "") -> list[tuple[str, float]]:
        """(name, last-modified in epoch seconds) of each blob whose name (below the sink's prefix) starts with
        PREFIX, sorted by name (the SAS needs list)."""
        import email.utils
        import xml.etree.ElementTree as ET

        full = (
            "/".join(p for p in (self.prefix, prefix) if p)
            if prefix
            else (self.prefix + "/" if self.prefix else "")
        )
        out, marker = [], ""
        while True:
            q = urllib.parse.urlencode(
                {"restype": "container", "comp": "list", "prefix": full, "marker": marker}
            )
            body = self._call("list", f"{self.base}/{self.container}?{q}&{self.sas}") or b""
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                raise SinkError(f"{self.describe()}: list answered something that is not XML") from None
            for b in root.iter("Blob"):
                name = b.findtext("Name") or ""
                modified = b.findtext("Properties/Last-Modified")
                stamp = email.utils.parsedate_to_datetime(modified).timestamp() if modified else 0.0
                out.append((name[len(self.prefix) + 1 :] if self.prefix else name, stamp))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return sorted(out)


def open_sink(uri: str, credential: str | None) -> FolderSink | BlobSink:
    u = urllib.parse.urlparse(uri)
    if u.scheme == "file":
        return FolderSink(Path(u.path))
    if u.scheme == "azblob":
        parts = u.path.strip("/").split("/", 1)
        container = parts[0]
        prefix = parts[1] if len(parts) > 1 else ""
        endpoint = (
            dict(urllib.parse.parse_qsl(u.query)).get("endpoint")
            or f"https://{u.netloc}.blob.core.windows.net"
        )
        if not credential:
            raise CollectorConfigError(f"{uri}: a SAS token is needed (MLINFRA_SERVE_COLLECT_CREDENTIAL)")
        return BlobSink(u.netloc, container, prefix, endpoint, credential)
    raise CollectorConfigError(
        f"sink {uri!r}: use azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL or file:///folder"
    )


# ----------------------------------------------------------------------------------------------------------------
# The collector


try:  # orjson (a scoring-server dependency) encodes numpy arrays natively, several times faster
    import orjson

    def _dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # e.g. a non-contiguous array or an object dtype
            return json.dumps(_jsonable(obj), separators=(",", ":")).encode()

except ImportError:  # pragma: no cover

    def _dumps(obj: Any) -> bytes:
        return json.dumps(_jsonable(obj), separators=(",", ":")).encode()


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


class Collector:
    """A scoring-server hook. ``on_drop(model)`` is called for each record it had to drop (queue or spool full)."""

    def __init__(
        self,
        config: CollectorConfig,
        sink: FolderSink | BlobSink,
        on_drop: Callable[[str], None] = lambda _m: None,
        log: Callable[[dict[str, Any]], None] = lambda _e: None,
        on_upload_error: Callable[[], None] = lambda: None,
    ):
        self.config = config
        self.sink = sink
        self.on_drop = on_drop
        self.on_upload_error = on_upload_error
        self.log = log
        self.spool = private_dir(config.spool_path())
        for part in self.spool.rglob(".*.part"):  # a write cut short (full disk, kill -9): never a record
            part.unlink(missing_ok=True)
        # A deque: append/popleft are atomic under the GIL and ~20x cheaper than queue.Queue on the request path.
        self.q: collections.deque[dict[str, Any]] = collections.deque()
        self.counts = {"sampled": 0, "dropped": 0, "spooled": 0, "uploaded": 0, "upload_errors": 0}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._headers = [h.lower() for h in config.headers]
        self._prefix = f"{_safe(config.endpoint)}/{_safe(config.deployment)}"
        self._salt = new_salt()
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)
        self._uploader = threading.Thread(target=self._upload_loop, name="collector-uploader", daemon=True)
        self._writer.start()
        self._uploader.start()

    # -- request path: sample and enqueue, nothing else ------------------------------------------------------

    def __call__(self, record: dict[str, Any]) -> None:
        if not sampled(str(record.get("request_id", "")), self.config.sample_rate, self._salt):
            return
        self.counts["sampled"] += 1
        if len(self.q) >= self.config.queue_max:
            self._drop(record.get("model", ""))
            return
        self.q.append(record)

    def _drop(self, model: str) -> None:
        self.counts["dropped"] += 1
        self.on_drop(model)

    # -- writer: queue → spool files --------------------------------------------------------------------------

    def _line(self, r: dict[str, Any], stamp: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": r.get("request_id"),
            "time": f"{stamp}.{int((r.get('ts', 0) % 1) * 1000):03d}Z",
            "endpoint": self.config.endpoint,
            "deployment": self.config.deployment,
            "model": r.get("model"),
            "version": r.get("version"),
        }
        if (
            "collection" in r
        ):  # a scoring script's record (mlinfra_scoring.collection): what it chose to collect
            out["collection"] = r["collection"]
            out["correlation_id"] = r.get("correlation_id")
            out["data"] = r.get("data")
            return out
        if "inputs" in self.config.capture:
            out["inputs"] = r.get("inputs") or {}
        if "outputs" in self.config.capture:
            out["outputs"] = r.get("outputs") or {}
        if self._headers:
            hs = {k.lower(): v for k, v in (r.get("headers") or {}).items()}
            out["headers"] = {h: hs[h] for h in self._headers if h in hs}
        return out

    def _spool_bytes(self) -> int:
        """Bytes waiting in the spool. The uploader deletes files concurrently: one that vanishes between the listing
        and its stat no longer counts (a FileNotFoundError here used to drop the whole batch being written)."""
        total = 0
        for p in self.spool.rglob("*.jsonl"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def _write_batch(self, batch: list[dict[str, Any]]) -> None:
        groups: dict[str, list[bytes]] = {}
        stamps: dict[int, tuple[str, str]] = {}  # second → (ISO stamp, hour path): formatted once per second
        parts: dict[tuple[Any, Any, str], str] = {}
        for r in batch:
            sec = int(r.get("ts") or time.time())
            if sec not in stamps:
                t = time.gmtime(sec)
                stamps[sec] = (time.strftime("%Y-%m-%dT%H:%M:%S", t), time.strftime("%Y/%m/%d/%H", t))
            stamp, hour = stamps[sec]
            mv = (r.get("model"), r.get("version"), hour)
            part = parts.get(mv)
            if part is None:
                part = parts[mv] = (
                    f"{self._prefix}/{_safe(str(mv[0] or 'unknown'))}/{_safe(str(mv[1] or '0'))}/{hour}"
                )
            groups.setdefault(part, []).append(_dumps(self._line(r, stamp)))
        limit = self.config.spool_max_mb * 1024 * 1024
        used = self._spool_bytes()
        for part, lines in groups.items():
            data = b"\n".join(lines) + b"\n"
            if used + len(data) > limit:  # bounded disk: drop and count, never block
                for _ in lines:
                    self._drop(part.split("/")[2])
                continue
            name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.jsonl"
            target = self.spool / part / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{name}.part")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
                raise
            used += len(data)
            self.counts["spooled"] += len(lines)
        self._wake.set()

    def spool_now(self, batch: list[dict[str, Any]]) -> None:
        """Write BATCH (records already sampled) to the spool now, bypassing the queue: the collector process
        (collector_process.py) consumes its ring only once they are on disk."""
        self.counts["sampled"] += len(batch)
        if batch:
            self._write_batch(batch)

    def _write_loop(self) -> None:
        while not self._stop.is_set() or self.q:
            self._stop.wait(self.config.flush_s)  # sleeps without the GIL; wakes at once on close
            while self.q:
                batch: list[dict[str, Any]] = []
                while self.q and len(batch) < self.config.batch:
                    batch.append(self.q.popleft())
                try:
                    self._write_batch(batch)
                except OSError as e:  # disk trouble: count the loss, keep serving
                    for r in batch:
                        self._drop(str(r.get("model", "")))
                    self.log({"event": "collector_spool_error", "error": str(e)})

    # -- uploader: spool files → sink ------------------------------------------------------------------------

    def pending(self) -> list[Path]:
        return sorted((p for p in self.spool.rglob("*.jsonl") if p.is_file()), key=lambda p: (p.name, str(p)))

    def _upload_loop(self) -> None:
        backoff = 0.5
        while True:
            files = self.pending()
            if not files:
                if self._stop.is_set() and not self._writer.is_alive():
                    return
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            ok = True
            for p in files:
                name = p.relative_to(self.spool).as_posix()
                try:
                    data = p.read_bytes()
                except OSError:
                    continue  # the file went away (another uploader after a restart): nothing to do
                try:
                    self.sink.put(name, data)
                except (
                    Exception
                ) as e:  # whatever storage does, the uploader lives: count, log (rate-limited), retry
                    self.counts["upload_errors"] += 1
                    with contextlib.suppress(Exception):
                        self.on_upload_error()
                    if backoff == 0.5 or self.counts["upload_errors"] % 20 == 0:
                        error = str(e) if isinstance(e, SinkError) else f"{type(e).__name__}: {str(e)[:200]}"
                        self.log({"event": "collector_upload_failed", "error": error, "pending": len(files)})
                    ok = False
                    break
                self.counts["uploaded"] += data.count(b"\n")
                p.unlink(missing_ok=True)
            if ok:
                backoff = 0.5
                continue
            if self._stop.is_set():  # closing: keep trying until the deadline, then leave it spooled
                if self._closing_deadline_passed():
                    return
                time.sleep(0.2)
            else:
                self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    _close_by: float = float("inf")

    def _closing_deadline_passed(self) -> bool:
        return time.monotonic() >= self._close_by

    def close(self, timeout: float = 5.0) -> None:
        """Flush the queue to the spool, then try to upload for up to TIMEOUT s; what is left stays spooled for
        the next start."""
        self._close_by = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout=timeout)
        self._uploader.join(timeout=max(0.0, self._close_by - time.monotonic()))


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:100] or "_"


def from_env(
    on_drop: Callable[[str], None],
    log: Callable[[dict[str, Any]], None],
    on_upload_error: Callable[[], None] = lambda: None,
) -> Collector | None:
    raw = os.environ.get("MLINFRA_SERVE_COLLECT")
    if not raw:
        return None
    config = CollectorConfig.from_json(raw)
    credential = os.environ.get("MLINFRA_SERVE_COLLECT_CREDENTIAL")
    if config.process:
        from mlinfra_scoring.collector_process import ProcessCollector

        try:
            return ProcessCollector(config, credential, on_drop, log, on_upload_error)  # type: ignore[return-value]
        except OSError as e:  # no room in /dev/shm (a small container): the same collector, in threads
            log({"event": "collector_process_unavailable", "error": str(e), "fallback": "threads"})
    sink = open_sink(config.sink, credential)
    return Collector(config, sink, on_drop, log, on_upload_error)
