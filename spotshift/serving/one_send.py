"""uvicorn's HTTP protocol with an answer's header block and body in one send, for every server of
ours that answers requests one by one (the router, the replicas).

uvicorn writes an answer's status line and headers, then its body, each straight to the socket:
two syscalls and two TCP segments (TCP_NODELAY) per answer, and a reader woken by the first
segment may have to wait for a second wake-up to get the body. :func:`http_protocol` is the
protocol class for ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any


class OneSendPerStep:
    """A client connection's transport as uvicorn sees it: an answer's header block and body leave
    in one send.

    uvicorn writes an answer's status line and headers, then its body, each straight to the socket
    (uvloop sends at once): two syscalls and two TCP segments (TCP_NODELAY) per answer. Measured on
    this machine (py-spy on a router at 700-1,000 req/s), the router's sends were half of its CPU.
    The first write is held; the next one (the body, written in the same step of the event loop)
    sends both at once, without waiting for the loop's next turn (an extra loop iteration per
    answer, which a request on an idle router pays in latency). A write left alone is sent at the
    loop's next turn (``close`` sends what is held first). Everything else is the real transport's.
    """

    __slots__ = ("_transport", "_held", "_loop")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self._held:  # the second write of a step: out now, with the one held
            self._held.append(data)
            self._flush()
            return
        self._loop.call_soon(self._flush)  # a write left alone leaves at the next turn
        self._held.append(data)

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@functools.cache
def http_protocol() -> type | str:
    """uvicorn's httptools protocol with :class:`OneSendPerStep` under it (``uvicorn.Config(http=...)``);
    uvicorn's own choice (``"auto"``) when httptools is not installed (it comes with the serving extra)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class OneSendHTTPProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(OneSendPerStep(transport, self.loop))

    return OneSendHTTPProtocol
