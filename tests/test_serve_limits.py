"""hbt-serve on uvicorn over loopback: slow, silent, oversized and numerous clients are cut off (issue 21)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'hbt[serve]'")

from hbt.serve.app import ServeConfig, create_app
from hbt.serve.server import ServerLimits, server_config
from tests.test_serve import index_dir, searcher  # noqa: F401 (fixtures)

HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@contextlib.contextmanager
def serving(searcher, limits: ServerLimits, config: ServeConfig = ServeConfig()):
    """The app on a free loopback port, on a thread; yields the port."""
    import uvicorn

    server = uvicorn.Server(server_config(create_app(searcher, config), "127.0.0.1", 0, limits))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (reading what it sent), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one response (its Content-Length long, or up to the connection's end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def status_of(sock: socket.socket) -> int:
    return response(sock)[0]


def test_a_silent_connection_is_closed_after_the_header_timeout(searcher):
    with serving(searcher, ServerLimits(header_seconds=0.5, keep_alive_seconds=60)) as port:
        with connect(port) as silent:
            assert closed_within(silent, 5) is not None


def test_headers_trickling_in_are_cut_off_at_the_header_timeout(searcher):
    with serving(searcher, ServerLimits(header_seconds=0.5, keep_alive_seconds=60)) as port:
        with connect(port) as slow:
            slow.sendall(HEAD)
            start, cut = time.monotonic(), False
            while time.monotonic() - start < 5 and not cut:  # uvicorn alone restarts its clock at each byte
                try:
                    slow.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                time.sleep(0.05)
            assert cut or closed_within(slow, 0.1) is not None
            assert time.monotonic() - start < 3


def test_the_header_timeout_spares_a_client_that_keeps_its_connection_busy(searcher):
    with serving(searcher, ServerLimits(header_seconds=0.5, keep_alive_seconds=60)) as port:
        with connect(port) as client:
            for _ in range(4):  # 4 requests 0.3 s apart: 1.2 s on one connection
                time.sleep(0.3)
                client.sendall(HEAD + b"\r\n")
                assert status_of(client) == 200


def test_an_idle_keep_alive_connection_closes(searcher):
    with serving(searcher, ServerLimits(header_seconds=60, keep_alive_seconds=0.5)) as port:
        with connect(port) as idle:
            idle.sendall(HEAD + b"\r\n")
            assert status_of(idle) == 200
            assert closed_within(idle, 5) is not None


def test_oversized_headers_get_400(searcher):
    with serving(searcher, ServerLimits(max_header_bytes=4096)) as port:
        with connect(port) as big:
            big.sendall(HEAD + b"X-Padding: " + b"a" * 8192)  # h11 measures a head still incomplete
            assert status_of(big) == 400
        with connect(port) as fine:
            fine.sendall(HEAD + b"X-Padding: " + b"a" * 1024 + b"\r\n\r\n")
            assert status_of(fine) == 200


def test_connections_beyond_the_limit_get_503(searcher):
    with serving(searcher, ServerLimits(max_connections=3, header_seconds=60)) as port:
        held = [connect(port) for _ in range(3)]
        time.sleep(0.2)  # the server has accepted them
        with connect(port) as extra:
            extra.sendall(HEAD + b"\r\n")
            assert status_of(extra) == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with connect(port) as later:
            later.sendall(HEAD + b"\r\n")
            assert status_of(later) == 200


def test_a_body_trickling_in_gets_408(searcher):
    with serving(searcher, ServerLimits(), ServeConfig(body_seconds=0.5)) as port:
        with connect(port) as slow:
            slow.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"query\": ")
            start = time.monotonic()
            status, body = response(slow)
            assert status == 408 and b"took over 0.5 s" in body
            assert time.monotonic() - start < 5
