"""The impairing proxy itself: delayed, in order, and cut on demand (used by the fault suite)."""

from __future__ import annotations

import socket
import time

from devkit.faults.impair import ImpairedProxy, Impairment


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return srv, srv.getsockname()[1]


def test_bytes_arrive_late_in_order_and_a_cut_breaks_the_connection() -> None:
    import threading

    srv, port = _echo_server()

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    impairment = Impairment(delay_ms=100, jitter_ms=20, loss=0.3)
    with ImpairedProxy("127.0.0.1", port, impairment=impairment, seed=7) as proxy:
        c = socket.create_connection(("127.0.0.1", proxy.port))
        c.settimeout(5)
        got = b""
        t0 = time.monotonic()
        for i in range(20):
            c.sendall(f"{i:03d};".encode())
            time.sleep(0.005)
        while len(got) < 80:
            got += c.recv(4096)
        elapsed = time.monotonic() - t0
        # order kept whatever the jitter and the retransmission-like holds
        assert got == b"".join(f"{i:03d};".encode() for i in range(20))
        assert elapsed >= 0.16  # both directions held at least 80 ms each
        assert proxy.stats.retransmit_like > 0
        proxy.cut()
        c.settimeout(2)
        try:
            closed = c.recv(10) == b""
        except ConnectionResetError:
            closed = True
        assert closed
        c.close()
    srv.close()
