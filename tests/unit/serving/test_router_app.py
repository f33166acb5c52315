"""The router's HTTP side: an answer leaves in one send (:class:`~spotshift.serving.one_send.OneSendPerStep`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from spotshift.serving.one_send import OneSendPerStep, http_protocol

BODY = b'{"ok": true}'


async def app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


class Spy:
    """The real transport, with every send recorded."""

    def __init__(self, transport: Any, sends: list[bytes]) -> None:
        self.transport, self.sends = transport, sends

    def write(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def test_each_answer_leaves_in_one_send_over_real_uvicorn() -> None:
    sends: list[bytes] = []

    class Recording(http_protocol()):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(Spy(transport, sends))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, http=Recording, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client() as client:  # one keep-alive connection, three answers on it
            for _ in range(3):
                r = client.post(f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions", content=b"{}")
                assert r.status_code == 200 and r.content == BODY
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert len(sends) == 3
    assert all(s.startswith(b"HTTP/1.1 200") and s.endswith(b"\r\n\r\n" + BODY) for s in sends)


def test_close_sends_what_is_held_first_and_the_rest_is_the_real_transport() -> None:
    calls: list[Any] = []

    class Fake:
        def write(self, data: bytes) -> None:
            calls.append(data)

        def close(self) -> None:
            calls.append("close")

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 9) if name == "peername" else default

    async def go() -> None:
        t = OneSendPerStep(Fake(), asyncio.get_running_loop())
        t.write(b"head\r\n\r\n")
        assert calls == []  # held
        t.write(b"body")
        assert calls == [b"head\r\n\r\nbody"]  # header block and body leave together, at once
        await asyncio.sleep(0)
        assert len(calls) == 1  # nothing sent twice
        t.write(b"alone")
        assert len(calls) == 1  # a lone write is held until the loop turns
        await asyncio.sleep(0)
        assert calls[1:] == [b"alone"]
        t.write(b"last")
        t.close()  # a connection closed right after its answer still gets the answer
        assert calls[2:] == [b"last", "close"]
        await asyncio.sleep(0)
        assert len(calls) == 4  # nothing sent twice
        assert t.get_extra_info("peername") == ("127.0.0.1", 9)

    asyncio.run(go())


def test_replicas_answer_with_one_send_per_answer_too() -> None:
    """A replica's answer reaches the router in one segment (one wake-up of the router per answer)."""
    from spotshift.serving.replica import ReplicaConfig
    from spotshift.serving.serve import _uvicorn_config

    cfg = ReplicaConfig("chat", "gcp/us-east4", "spot", 1000.0, 1.0, 0.0)
    assert _uvicorn_config(cfg, {}, None).http is http_protocol() != "auto"
