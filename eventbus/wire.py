"""A lean NATS connection for the tap's hot path: the messages its pull consumers deliver.

nats-py builds a `Msg` per message, parses its headers, queues it and runs a callback task for
it: about 12 µs a message, more than the rest of the tap's work on it. This connection speaks
the few parts of the NATS client protocol the tap needs to read a pull consumer (CONNECT, SUB,
PUB, PING/PONG; MSG and HMSG in) and hands each chunk the socket delivers to `on_frames` in one
synchronous call, as `(subject, reply, headers, payload)` tuples, headers still raw.

It is only for that: everything else (consumer create/delete, advisories, KV, lag sampling)
goes through nats-py. It supports plain TCP with no credentials, user/password or a token in the
URL; for TLS, nkeys or a .creds file the tap keeps nats-py's path (`Unsupported`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable

# subject, reply (b"" when none), raw header block or None, payload
Frame = tuple[bytes, bytes, bytes | None, bytes]
FramesHandler = Callable[[list[Frame]], None]
# fast(data, pos, frames) -> the position after what it read: an optional reader for runs of
# MSG and HMSG frames straight from the bytes (eventbus.scan). It first handles `frames`, the frames
# parsed so far and not yet handed over (order matters), and clears that list.
FastReader = Callable[[bytes, int, list[Frame]], int]

_CRLF = b"\r\n"
MAX_CONTROL_LINE = 4096


class WireError(Exception):
    """The server refused us or the connection broke."""


class Unsupported(WireError):
    """This server needs what the lean connection does not do (TLS, nkeys, JWT)."""


class _Protocol(asyncio.Protocol):
    def __init__(self, on_frames: FramesHandler, fast: FastReader | None = None):
        self.on_frames = on_frames
        self.fast = fast
        self.rest: list[bytes] = []  # the start of a frame whose end has not arrived yet
        self.rest_size = 0
        self.need = 0  # the bytes that frame has in all (0 while its control line is incomplete)
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self.pongs: list[asyncio.Future[None]] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        failure = exc or WireError(self.error or "connection closed by the server")
        for pong in self.pongs:
            if not pong.done():
                pong.set_exception(failure)
        if not self.info.done():
            self.info.set_exception(failure)
        if not self.lost.done():
            self.lost.set_result(failure)

    def data_received(self, data: bytes) -> None:
        # Parsed as `bytes`, not a bytearray: slices are then the payloads themselves (one copy,
        # not two). An incomplete frame at the end waits in `rest` until all of it is there.
        if self.rest:
            self.rest.append(data)
            self.rest_size += len(data)
            if self.rest_size < self.need:
                return
            data = b"".join(self.rest)
            self.rest, self.rest_size, self.need = [], 0, 0
        frames: list[Frame] = []
        append = frames.append
        find, startswith = data.find, data.startswith
        pos, end_of_data = 0, len(data)
        fast, fast_called = self.fast, False
        try:
            while True:
                if fast is not None and (startswith(b"MSG ", pos) or startswith(b"HMSG ", pos)):
                    fast_called = True  # it may have taken frames, or read some: end the read below
                    after = fast(data, pos, frames)
                    if after != pos:
                        pos = after
                        continue
                eol = find(_CRLF, pos)
                if eol < 0:
                    if end_of_data - pos > MAX_CONTROL_LINE:
                        self._fail("control line too long")
                    break
                headed = startswith(b"HMSG", pos)
                if headed or startswith(b"MSG ", pos):
                    # MSG <subject> <sid> [reply] <size>
                    # HMSG <subject> <sid> [reply] <header size> <size>
                    parts = data[pos:eol].split()
                    start = eol + 2
                    stop = start + int(parts[-1])
                    if stop + 2 > end_of_data:
                        self.need = stop + 2 - pos  # the rest of this message is on its way
                        break
                    reply = parts[3] if len(parts) == (6 if headed else 5) else b""
                    split = start + int(parts[-2]) if headed else start
                    append((parts[1], reply, data[start:split] if headed else None,
                            data[split:stop]))  # fmt: skip
                    pos = stop + 2
                    continue
                line = data[pos:eol]
                pos = eol + 2
                if line == b"PING":
                    self._write(b"PONG\r\n")
                elif line == b"PONG":
                    if self.pongs:
                        self.pongs.pop(0).set_result(None)
                elif line.startswith(b"INFO "):
                    if not self.info.done():
                        self.info.set_result(json.loads(line[5:]))
                elif line.startswith(b"-ERR"):
                    self.error = line[5:].decode(errors="replace").strip(" '")
                    if "permissions violation" not in self.error.lower():
                        self._fail(self.error)
                # +OK and anything unknown: nothing to do
        except Exception:  # the connection fails; what the fast reader took is past next_seq
            if fast_called:
                self.on_frames([])  # so hand it over, or it is lost without a gap
            raise
        if pos < end_of_data:
            self.rest, self.rest_size = [data[pos:]], end_of_data - pos
        if frames or fast_called:
            self.on_frames(frames)  # for a fast reader: the end of this read

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, reason: str) -> None:
        self.error = reason
        if self.transport is not None:
            self.transport.close()


class WireConnection:
    def __init__(self, protocol: _Protocol):
        self.protocol = protocol
        self.next_sid = 1

    @property
    def lost(self) -> asyncio.Future[BaseException | None]:
        """Resolves (with the reason) when the connection is gone."""
        return self.protocol.lost

    @property
    def closed(self) -> bool:
        return self.protocol.lost.done()

    def subscribe(self, subject: str) -> int:
        sid = self.next_sid
        self.next_sid += 1
        self.protocol._write(f"SUB {subject} {sid}\r\n".encode())
        return sid

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else (
            f"PUB {subject} {len(payload)}\r\n")  # fmt: skip
        self.protocol._write(head.encode() + payload + _CRLF)

    async def flush(self, timeout: float = 5.0) -> None:
        """PING and wait for the PONG: the server has processed all we sent before."""
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.protocol.pongs.append(pong)
        self.protocol._write(b"PING\r\n")
        async with asyncio.timeout(timeout):
            await pong

    def pause(self) -> None:
        """Stop reading from the socket (TCP pushes back on the server) until `resume()`."""
        if self.protocol.transport is not None and not self.closed:
            self.protocol.transport.pause_reading()

    def resume(self) -> None:
        if self.protocol.transport is not None and not self.closed:
            self.protocol.transport.resume_reading()

    def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()


async def connect(
    url: str,
    on_frames: FramesHandler,
    name: str = "flowscope-tap-reader",
    timeout: float = 5.0,
    fast: FastReader | None = None,
) -> WireConnection:
    """Connect to the first server of `url` (nats://[user:pass@|token@]host:port[,...]).
    `on_frames` gets the frames of each socket read; see `FastReader` for `fast`."""
    first = url.split(",")[0].strip()
    if "://" not in first:
        first = "nats://" + first
    parsed = urllib.parse.urlparse(first)
    if parsed.scheme not in ("nats", ""):
        raise Unsupported(f"scheme {parsed.scheme!r}")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, protocol = await loop.create_connection(lambda: _Protocol(on_frames, fast), host, port)
        info = await protocol.info
    conn = WireConnection(protocol)
    if info.get("tls_required") or info.get("nonce"):
        conn.close()
        raise Unsupported("the server wants TLS or signed authentication")
    options: dict[str, object] = {
        "verbose": False, "pedantic": False, "lang": "python", "version": "flowscope",
        "protocol": 1, "headers": True, "no_responders": True, "echo": False, "name": name,
    }  # fmt: skip
    # as nats-py sends them: taken from the URL as written (no percent-decoding)
    if parsed.username and parsed.password is not None:
        options["user"], options["pass"] = parsed.username, parsed.password
    elif parsed.username:
        options["auth_token"] = parsed.username
    protocol._write(b"CONNECT " + json.dumps(options).encode() + _CRLF)
    try:
        await conn.flush(timeout)
    except (TimeoutError, WireError, OSError) as exc:
        conn.close()
        raise WireError(protocol.error or f"no answer to CONNECT ({exc!r})") from exc
    return conn


def parse_headers(block: bytes) -> tuple[str | None, str, dict[str, str]]:
    """(status, description, headers) of a raw `NATS/1.0[ status[ description]]` block, read as
    nats-py reads it: names ASCII without whitespace (others skipped), values stripped and
    decoded with replacement, a repeated name keeps its last value."""
    lines = block.split(_CRLF)
    first = lines[0]
    status, description = None, ""
    if len(first) > 9:
        code, _, desc = first[9:].strip().partition(b" ")
        if code.isdigit():
            status, description = code.decode(), desc.strip().decode("utf-8", "replace")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key.split() != [key]:  # empty, or with whitespace in it
            continue
        headers[key] = value.strip().decode("utf-8", "replace")
    return status, description, headers
