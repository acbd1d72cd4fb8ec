"""A small HTTP port for a process without a web framework (the tap, the demo): `/metrics`
(Prometheus' text format), `/healthz` (the process answers) and `/readyz` (its checks).

`/readyz` answers 200 `{"status": "ok", "checks": {...}}` when every check says "ok", else
503 `{"status": "unavailable", "checks": {...}}` with each failing check's reason in a word or
two. The checks read the process's own state (no I/O), so a probe answers at once even when
NATS or PostgreSQL is gone.

Plain asyncio: one request per connection, a bounded request head read with a timeout, the
connection closed after the answer. A port that cannot be bound (another tap on this machine
has it) is one clear log line and the process runs on without the port: never a crash loop.
With FLOWSCOPE_METRICS_TOKEN set, `/metrics` wants it as a bearer token (401 without).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("flowscope.http")

Checks = Callable[[], dict[str, str]]  # check name -> "ok" or why not
HEAD_LIMIT = 16 * 1024  # bytes of request line and headers
HEAD_TIMEOUT = 5.0  # seconds a client may take to send them


def readiness(checks: dict[str, str]) -> tuple[int, dict[str, object]]:
    """(status, body) of /readyz for these checks (pure: unit-tested)."""
    if all(result == "ok" for result in checks.values()):
        return 200, {"status": "ok", "checks": checks}
    return 503, {"status": "unavailable", "checks": checks}


class ProbeServer:
    """Serves /metrics, /healthz and /readyz on `host:port` until `close()`."""

    def __init__(
        self,
        name: str,
        registry: CollectorRegistry,
        checks: Checks,
        host: str = "127.0.0.1",
        port: int = 0,
        setting: str = "",
        token: str | None = None,
    ):
        self.name = name  # "tap", "demo": for log lines
        self.registry = registry
        self.checks = checks
        self.host = host
        self.port = port
        self.setting = setting  # the environment variable that chooses the port
        # /metrics wants `Authorization: Bearer <token>` when one is set (the probes never do)
        self.token = metrics_token() if token is None else token
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> bool:
        """Listen; False (logged once) when the port cannot be bound."""
        try:
            self.server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=HEAD_LIMIT
            )
        except OSError as exc:
            log.warning(
                "%s: cannot listen on %s:%d (%s): /metrics, /healthz and /readyz are off in "
                "this process; give it a free port with %s (0 turns the port off)",
                self.name, self.host, self.port, exc.strerror or exc, self.setting or "its setting",
            )  # fmt: skip
            return False
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("%s: metrics and probes on %s/metrics, /healthz, /readyz", self.name, self.url)
        return True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await self._answer(writer, 400, "text/plain", b"bad request\n")
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._answer(writer, 405, "text/plain", b"method not allowed\n")
                return
            if path == "/metrics" and not bearer_ok(self.token, _header(lines, "authorization")):
                await self._answer(writer, 401, "text/plain", b"a bearer token is needed\n",
                                   head_only=method == "HEAD", extra=CHALLENGE)  # fmt: skip
                return
            status, content_type, body = self.respond(path)
            await self._answer(writer, status, content_type, body, head_only=method == "HEAD")
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # one broken answer must not take the port down: say it, go on
            log.exception("%s: answering a request on %s", self.name, self.url)
        finally:
            writer.close()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path`."""
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "application/json", b'{"status": "ok"}'
        if path == "/readyz":
            status, body = readiness(self.checks())
            return status, "application/json", json.dumps(body).encode()
        return 404, "application/json", b'{"detail": "not found: /metrics, /healthz, /readyz"}'

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        head_only: bool = False,
        extra: str = "",
    ) -> None:
        reason = REASONS.get(status, "")
        head = (
            f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + (b"" if head_only else body))
        await writer.drain()


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 503: "Service Unavailable"}  # fmt: skip
CHALLENGE = 'WWW-Authenticate: Bearer realm="metrics"\r\n'


def metrics_token() -> str:
    """FLOWSCOPE_METRICS_TOKEN: when set, every process's /metrics (web, tap, demo) answers
    only a request carrying `Authorization: Bearer <it>` (Prometheus' `authorization`
    setting); the probes (/healthz, /readyz) stay open for the orchestrator."""
    return os.environ.get("FLOWSCOPE_METRICS_TOKEN", "").strip()


def bearer_ok(token: str, authorization: str | None) -> bool:
    """True with no token set, or when `authorization` is `Bearer <token>` (compared in
    constant time)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                               token.encode())  # fmt: skip


def _header(lines: list[str], name: str) -> str | None:
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


def parse_port(value: str, default: int) -> int:
    """A port setting: empty means `default`; 0 turns the port off (ValueError otherwise)."""
    value = value.strip()
    if not value:
        return default
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port: {value}")
    return port
