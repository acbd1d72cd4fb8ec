"""A TCP proxy for tests: one client's connection to a real server can be cut while the server,
and every other client of it, stays up (what a load balancer's idle timeout, a NAT table flush
or a firewall does to one connection)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.accepted = 0  # connections made through it, in all
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy accept").start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.open += [client, server]
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Every connection through the proxy dies at once (new ones are still let through);
        returns how many were cut."""
        with self.lock:
            sockets, self.open = self.open, []
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return len(sockets) // 2

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


@contextmanager
def proxy_to(url: str) -> Iterator[Proxy]:
    """A proxy in front of the server at `url` (nats://host:port)."""
    host, port = url.rsplit("//", 1)[-1].rsplit(":", 1)
    p = Proxy(host, int(port))
    try:
        yield p
    finally:
        p.close()
