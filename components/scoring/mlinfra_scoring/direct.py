"""The direct path (issue 19): an Open Inference Protocol inference request that arrives whole in one read is answered
from the connection's bytes, without aiohttp's request, router, middleware and response objects — about a third of a
one-row request's CPU at one connection (benchmarks/serving/SEGMENTS.md, DIRECT.md).

The bytes are parsed by httptools (llhttp, the parser aiohttp's own C parser is built on; not a parser of ours). A
request takes the direct path only when it is plainly one the server would answer itself — POST
``/v2/models/{name}[/versions/{version}]/infer`` for a served model, HTTP/1.1 keep-alive, a Content-Length body
within ``--max-body-mb`` (and 256 KiB) and nothing after it, no Transfer-Encoding,
Content-Encoding, Expect or Upgrade, an accepted key, room under ``--max-queue``, models ready, not draining. Anything
else — and every later request on that connection — goes to aiohttp, which gets the connection's
bytes from the first one on, so what a client sees never depends on the path: the same status codes, error bodies,
headers (``X-Request-Id``, ``Retry-After``, ``Date``, ``Server``), metrics and access-log lines.

A connection is handed to aiohttp for good rather than back and forth: aiohttp's parser keeps state between reads,
and only a connection whose every byte went one way has no half-read request on the other side.
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

from mlinfra_scoring import binary

if TYPE_CHECKING:
    from mlinfra_scoring.server import ScoringServer

try:  # the "fast" extra (images carry it); without it every request goes through aiohttp
    import httptools
except ImportError:  # pragma: no cover - exercised only without httptools
    httptools = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "DirectConnection"]

AVAILABLE = httptools is not None
"""Whether the direct path can run here (httptools is installed)."""

MAX_HEAD = 8190
"""A request whose headers (request line included) are longer goes to aiohttp, whose own limit per line this is."""
_REFUSED = frozenset((b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"trailer"))
"""Headers that send a request to aiohttp: framing, encodings and upgrades the direct path leaves to it (and any
``Connection`` but keep-alive, HTTP/1.1's default)."""
_BINARY = binary.HEADER.lower().encode()
_PREFIX = b"/v2/models/"
_START = b"POST " + _PREFIX
MAX_BODY = 256 * 1024
"""A larger body goes to aiohttp, which reads it as it comes (this path parses a request again with every read)."""
WAIT_S = 0.05
"""How long the first bytes of a request wait for the rest before aiohttp gets them (and applies its timeouts): a
client that writes headers and body apart sends the body within microseconds; a slow one is aiohttp's."""
_TAKEN, _WAIT, _NO = object(), object(), object()
_PATTERNS = {
    "infer": "/v2/models/{name}/infer",
    "infer_version": "/v2/models/{name}/versions/{version}/infer",
}
"""The routes' patterns as aiohttp names them (trace span names)."""
_SERVER = SERVER_SOFTWARE.encode()


class _Date:
    """The Date header's value, remade once a second (as aiohttp does)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode()
        return self.value


_DATE = _Date()


def head(status: int, content_type: str, length: int, rid: str, extra: dict[str, str] | None = None) -> bytes:
    """A response's status line and headers, as aiohttp writes them for the same web.Response."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
    if extra:
        lines.extend(f"{k}: {v}\r\n".encode() for k, v in extra.items())
    lines.append(f"Content-Type: {content_type}\r\n".encode())
    lines.append(
        b"X-Request-Id: %s\r\nContent-Length: %d\r\nDate: %s\r\nServer: %s\r\n\r\n"
        % (rid.encode(), length, _DATE.now(), _SERVER)
    )
    return b"".join(lines)


class _Request:
    """What httptools hands over for one request (its callbacks)."""

    __slots__ = ("begun", "body", "complete", "headers", "url")

    def __init__(self) -> None:
        self.begun = 0
        self.complete = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete += 1


class DirectConnection:
    """One connection's direct path. :meth:`take` answers bytes that make one whole inference request the direct
    path serves, keeps a request's first bytes while the rest is on its way (a client that writes its headers and its
    body apart: httpx, h11), or gives back every byte it kept for aiohttp, whose connection it is from then on."""

    __slots__ = ("busy", "guard", "kept", "owner", "pending", "timer")

    def __init__(self, owner: ScoringServer, guard: Any) -> None:
        self.owner, self.guard = owner, guard
        self.busy: Any = None  # the task answering a request of this connection
        self.pending: list[bytes] = []  # bytes that came while it did: they wait their turn
        self.kept = b""  # the first bytes of a request whose rest has not come yet
        self.timer: Any = None  # hands KEPT to aiohttp if the rest takes longer than WAIT_S

    def take(self, data: bytes) -> bytes | None:
        """None: DATA is answered (or kept until its request is whole); else the bytes aiohttp must now get — all
        this connection sent, from the first byte of the request the direct path does not serve."""
        if self.kept:
            data = self.kept + data
            self.kept = b""
        verdict = self._take(data)
        if verdict is _WAIT:
            self.kept = data
            if self.timer is None:  # the connection counts as busy meanwhile: no idle cut
                self.guard.busy += 1
                self.timer = asyncio.get_running_loop().call_later(WAIT_S, self._give_up)
            return None
        if self.timer is not None:
            self._stop_waiting()
        return None if verdict is _TAKEN else data

    def close(self) -> None:
        """The connection is gone: what it kept goes nowhere."""
        if self.timer is not None:
            self._stop_waiting()
        self.kept = b""
        self.pending.clear()

    def _stop_waiting(self) -> None:
        self.timer.cancel()
        self.timer = None
        self.guard.busy -= 1

    def _give_up(self) -> None:
        """The rest of a kept request did not come within WAIT_S: aiohttp reads it (and times out its body)."""
        self._stop_waiting()
        kept, self.kept = self.kept, b""
        self.guard.to_aiohttp(kept)

    def _take(self, data: bytes) -> object:
        owner = self.owner
        if owner.dataplane.draining or not owner.dataplane.ready:
            return _NO
        if not data.startswith(_START):
            return _WAIT if _START.startswith(data) else _NO
        end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            return _WAIT if len(data) <= MAX_HEAD else _NO
        req = _Request()
        parser = httptools.HttpRequestParser(req)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:  # aiohttp answers it (its malformed-request 400)
            return _NO
        if req.begun != 1 or req.complete > 1 or parser.get_http_version() != "1.1":
            return _NO  # a pipelined second request, or HTTP/1.0: aiohttp's
        route, name, version = _route(req.url)
        if route is None:
            return _NO
        model = owner.repository.models.get(name)
        if model is None or (version is not None and version != model.version):
            return _NO  # aiohttp's 404 names what is served
        header_length = None
        authorization = ""
        rid = ""
        length = -1
        for k, v in req.headers:
            k = k.lower()
            if k in _REFUSED:
                return _NO
            if k == b"content-length":
                if not v.isdigit():
                    return _NO
                length = int(v)
            elif k == b"connection":
                if v.lower() != b"keep-alive":
                    return _NO
            elif k == b"authorization" and not authorization:  # the first of each, as aiohttp's .get()
                authorization = v.decode("latin-1")
            elif k == b"x-request-id" and not rid:
                rid = v.decode("latin-1")
            elif k == _BINARY and header_length is None:
                header_length = v.decode("latin-1")
        if length < 0 or length > min(owner.body_limit, MAX_BODY):
            return _NO  # no Content-Length, or a body aiohttp reads better (and past the limit: its 413)
        if not req.complete:
            return _WAIT
        raw = b"".join(req.body)
        if len(raw) != length:
            return _NO
        guard = self.guard
        if not owner.authorized_header(authorization) or owner.inferring >= owner.config.max_queue:
            return _NO  # aiohttp's 401 or 503, counted as they are
        if guard.transport.is_closing() or guard.paused:
            return _NO
        owner.admit()
        rid = owner.request_id(rid)
        headers = _headers(req.headers) if owner.dataplane.hooks or owner.otlp is not None else {}
        self.busy = asyncio.get_running_loop().create_task(  # referenced until done
            self._answer(route, model, raw, header_length, rid, headers, req.url)
        )
        return _TAKEN

    async def _answer(
        self,
        route: str,
        model: Any,
        raw: bytes,
        header_length: str | None,
        rid: str,
        headers: Any,
        url: bytes,
    ) -> None:
        owner, guard = self.owner, self.guard
        t0 = time.perf_counter()
        span = None if owner.otlp is None else owner.start_span("POST", _PATTERNS[route], headers, rid)
        owner.in_flight += 1
        guard.busy += 1
        extra: dict[str, str] | None = None
        try:
            body, content_type, extra = await owner.infer_reply(model, raw, header_length, rid, headers)
            status = 200
        except Exception as e:
            status, body, extra = owner.error_reply(e)
            content_type = "application/json"
        finally:
            owner.in_flight -= 1
            owner.release()
            guard.busy -= 1
            guard.since = time.monotonic()
        transport = guard.transport
        if not transport.is_closing():
            transport.write(head(status, content_type, len(body), rid, extra) + body)
        guard.answered()
        try:
            owner.metrics.direct.inc()
            owner.account(
                route,
                model.name,
                model.version,
                status,
                time.perf_counter() - t0,
                rid,
                "POST",
                url.decode("latin-1"),
                span,
            )
        finally:  # the connection's next request is read whatever happens here
            self.busy = None
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            guard.data_received(data)


def _route(url: bytes) -> tuple[str | None, str, str | None]:
    """(route name, model name, version) of an infer URL as aiohttp's router would match it; (None, ...) for any
    other, or one with a query, an escape, a dot segment or an empty segment (aiohttp decides those)."""
    if b"?" in url or b"%" in url or b"#" in url or b"/." in url or not url.endswith(b"/infer"):
        return None, "", None
    parts = url[len(_PREFIX) : -len(b"/infer")].split(b"/")
    try:
        if len(parts) == 1 and parts[0]:
            return "infer", parts[0].decode(), None
        if len(parts) == 3 and parts[0] and parts[1] == b"versions" and parts[2]:
            return "infer_version", parts[0].decode(), parts[2].decode()
    except UnicodeDecodeError:
        pass
    return None, "", None


def _headers(pairs: list[tuple[bytes, bytes]]) -> Any:
    """The request's headers as aiohttp gives them to the data plane (case-insensitive, for collection hooks)."""
    return CIMultiDictProxy(CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs))
