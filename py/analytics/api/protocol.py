"""HTTP/1.1 framing guards that Hypercorn and h11 leave to the application.

We serve HTTP/1.1 behind a load balancer; each guard closes a gap found by probing a real
`analytics serve`:

- `ProtocolGuard` (ASGI middleware, the outermost):
  - A request carrying both `Content-Length` and `Transfer-Encoding` is read by h11 as
    chunked, and the bytes the Content-Length covered beyond the chunks run as a second
    request: a front end that framed by Content-Length has been smuggled past (CL.TE).
    RFC 9112 §6.1: such a message is an error, and the connection closes after the response:
    400 `ambiguous_length`, `Connection: close`.
  - h11 enforces `h11_max_incomplete_size` only while a head is incomplete, and Hypercorn
    reads 64 KiB at a time, so a head of up to 64 KiB arriving in one piece was accepted.
    A head over `MAX_HEAD_BYTES` (target plus header names and values) is refused: 431
    `headers_too_large`, `Connection: close`.
  - A response sent before the request body was read to its end (a 401 or 413 decided on
    the headers) ends the connection, since the unread body cannot be told from the next
    request; without `Connection: close` a keep-alive client would send its next request
    into a closing connection and lose it. Every such response says `Connection: close`.
- `Http11Only` (Hypercorn's HTTP/1.1 protocol, installed by `http11_only()` in each worker):
  no h2c upgrade, no HTTP/2 prior knowledge, and a 408 for a request head that times out.
"""

from __future__ import annotations

import logging

import h11
import orjson
from hypercorn.events import Closed, Event
from hypercorn.protocol.h11 import H11Protocol
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analytics.runtime import prometheus

log = logging.getLogger(__name__)

#: The largest request head accepted: target plus header names and values, in bytes. The
#: same figure bounds a head arriving in pieces (`h11_max_incomplete_size`, serve.py).
MAX_HEAD_BYTES = 16 * 1024

_CLOSE = (b"connection", b"close")


def head_bytes(scope: Scope) -> int:
    """The size of the request head as `MAX_HEAD_BYTES` counts it."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) for name, value in scope["headers"])


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (chunked, or a non-zero Content-Length)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip().lstrip(b"0"):  # h11 checked: digits
            return True
    return False


class ProtocolGuard:
    def __init__(self, app: ASGIApp, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if head_bytes(scope) > self.max_head_bytes:
            message = f"request head is over {self.max_head_bytes} bytes"
            await _refuse(scope, send, 431, "headers_too_large", message)
            return
        names = {name for name, _ in scope["headers"]}
        if b"content-length" in names and b"transfer-encoding" in names:
            message = "Content-Length and Transfer-Encoding together are ambiguous"
            await _refuse(scope, send, 400, "ambiguous_length", message)
            return

        body_read = not has_body(scope)

        async def receive_tracked() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read = True
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_read:
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _CLOSE[0]]
                message = {**message, "headers": [*kept, _CLOSE]}
            await send(message)

        await self.app(scope, receive_tracked, send_closing)


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """Answers `status` with the usual JSON error body and closes the connection after it."""
    prometheus.rejections.labels(code).inc()
    log.info(
        "refused request: %s",
        code,
        extra={"code": code, "status": status, "client": _client(scope.get("client"))},
    )
    body = orjson.dumps({"code": code, "message": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        _CLOSE,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _client(client: object) -> str | None:
    if isinstance(client, tuple | list) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return None


class Http11Only(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol without its ways into HTTP/2, and with a 408.

    Hypercorn has no setting for h2c: `H11Protocol._check_protocol` answers `Upgrade: h2c`
    with 101 and raises `H2CProtocolRequiredError`, and a `PRI * HTTP/2.0` request line
    raises `H2ProtocolAssumedError`; `ProtocolWrapper` (protocol/__init__.py) catches both
    and switches the connection to its HTTP/2 protocol, whose limits are not ours (a 60 KB
    header went through). Overriding the two hooks here is the narrowest change: the h2c
    upgrade is ignored (RFC 9110 §7.8 lets a server do so; the request is served as the
    HTTP/1.1 request it also is, under the same guards), and prior knowledge gets 400 and
    a closed connection, as any other unknown protocol would.

    Hypercorn closes a connection whose request head is still incomplete when the
    keep-alive timer (or the read timeout) fires, silently. When that happens with part
    of a head received, it is a slow client (slowloris): it is answered 408 first (RFC 9110
    §15.5.9), logged and counted (`rejections{code="request_timeout"}`).
    """

    async def _check_protocol(self, event: h11.Request) -> None:
        return  # h2c upgrade ignored; prior knowledge is refused in `_create_stream`

    async def _create_stream(self, request: h11.Request) -> None:
        if request.method == b"PRI" and request.target == b"*":
            prometheus.rejections.labels("http2_refused").inc()
            await self._send_error_response(400)
            await self.send(Closed())
            return
        await super()._create_stream(request)

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed) and self._head_incomplete():
            received = len(self.connection.trailing_data[0])
            prometheus.rejections.labels("request_timeout").inc()
            log.info(
                "request head timed out: 408",
                extra={
                    "code": "request_timeout",
                    "client": _client(self.client),
                    "head_bytes_received": received,
                },
            )
            await self._send_error_response(408)
        await super().handle(event)

    def _head_incomplete(self) -> bool:
        """Part of a request head received and nothing answered yet (not at shutdown)."""
        connection = self.connection
        return (
            isinstance(connection, h11.Connection)
            and connection.our_state is h11.IDLE
            and connection.their_state is h11.IDLE
            and bool(connection.trailing_data[0])
            and not self.context.terminated.is_set()
        )


def http11_only() -> None:
    """Make every Hypercorn connection of this process use `Http11Only` (call it before the
    server starts). `ProtocolWrapper`, shared by the asyncio and trio workers, builds its
    HTTP/1.1 protocol from the name `H11Protocol` in `hypercorn.protocol`: rebinding that one
    name is the whole change, and it fails loudly if a Hypercorn upgrade moved the hooks."""
    import hypercorn.protocol

    if hypercorn.protocol.H11Protocol is Http11Only:
        return
    for hook in ("_check_protocol", "_create_stream", "_send_error_response", "handle"):
        if not callable(getattr(H11Protocol, hook, None)):
            raise RuntimeError(f"hypercorn's H11Protocol has no {hook}: re-check Http11Only")
    if hypercorn.protocol.H11Protocol is not H11Protocol:
        raise RuntimeError("hypercorn.protocol.H11Protocol is not the class Http11Only extends")
    hypercorn.protocol.H11Protocol = Http11Only  # type: ignore[misc]
