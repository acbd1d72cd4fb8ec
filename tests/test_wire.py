"""The tap's lean NATS reader (eventbus.wire): frames exactly as nats-py would see them."""

from __future__ import annotations

import asyncio

import nats
import pytest

from eventbus import wire
from eventbus.observers import WireConsumerObserver
from eventbus.wire import Frame, _Protocol, parse_headers


def test_parse_headers_reads_status_lines_and_headers_as_nats_py_does():
    assert parse_headers(b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\n\r\n") == (
        "100",
        "Idle Heartbeat",
        {"Nats-Last-Consumer": "7"},
    )
    assert parse_headers(b"NATS/1.0 404 No Messages\r\n\r\n") == ("404", "No Messages", {})
    assert parse_headers(b"NATS/1.0 408\r\n\r\n") == ("408", "", {})
    block = (
        b"NATS/1.0\r\nA: 1\r\nA: 2\r\nNo-Space:x\r\nbad name: skipped\r\n"
        b"Caf\xc3\xa9: skipped\r\nUtf: \xff\xfe\r\nno colon\r\n\r\n"
    )
    status, _, headers = parse_headers(block)
    assert status is None
    assert headers == {"A": "2", "No-Space": "x", "Utf": "\ufffd\ufffd"}


class _Sink(asyncio.Transport):
    """Where the protocol writes its PONGs: a real Transport subclass, kept in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


async def test_frames_split_anywhere_across_reads_come_out_whole():
    stream = (
        b"INFO {}\r\nPING\r\n"
        b"MSG a.b 1 5\r\nhello\r\n"
        b"MSG a.c 1 $JS.ACK.S.c.1.2.2.1700000000000000000.0 0\r\n\r\n"
        b"HMSG a.d 1 _INBOX.x 18 22\r\nNATS/1.0\r\nK: v\r\n\r\n\x00\r\n\xff\r\n"
        b"+OK\r\nHMSG a.e 1 16 16\r\nNATS/1.0 100\r\n\r\n\r\n"
    )
    expected: list[Frame] = [
        (b"a.b", b"", None, b"hello"),
        (b"a.c", b"$JS.ACK.S.c.1.2.2.1700000000000000000.0", None, b""),
        (b"a.d", b"_INBOX.x", b"NATS/1.0\r\nK: v\r\n\r\n", b"\x00\r\n\xff"),
        (b"a.e", b"", b"NATS/1.0 100\r\n\r\n", b""),
    ]
    for size in (1, 2, 3, 7, 64, len(stream)):
        got: list[Frame] = []
        protocol = _Protocol(got.extend)
        sink = _Sink()
        protocol.connection_made(sink)
        for i in range(0, len(stream), size):
            protocol.data_received(stream[i : i + size])
        assert got == expected, size
        assert bytes(sink.written) == b"PONG\r\n"  # answered the server's PING
        assert protocol.rest == []


async def test_a_fast_reader_gets_its_runs_in_order_with_the_other_frames():
    """The contract of `fast`: it is offered each MSG frame, handles the frames parsed before it
    first, and the end of each read still reaches `on_frames`."""
    stream = b"".join(
        [
            b"MSG f 1 3\r\none\r\nMSG f 1 3\r\ntwo\r\n",
            b"HMSG h 1 12 13\r\nNATS/1.0\r\n\r\nx\r\n",
            b"MSG s 1 5\r\nslow!\r\nMSG f 1 5\r\nthree\r\nPING\r\nMSG s 1 1\r\n4\r\n",
            b"MSG f 1 " + b"%d\r\n" % 3000 + b"5" * 3000 + b"\r\n",
        ]
    )
    for size in (1, 5, 64, 1000, len(stream)):
        reader = _ToyReader()
        protocol = _Protocol(reader.on_frames, reader.fast)
        protocol.connection_made(_Sink())
        reads = 0
        for i in range(0, len(stream), size):
            protocol.data_received(stream[i : i + size])
            reads += 1
        assert reader.log == [
            ("fast", b"one"), ("fast", b"two"), ("frame", b"x"), ("frame", b"slow!"),
            ("fast", b"three"), ("frame", b"4"), ("fast", b"5" * 3000),
        ], size  # fmt: skip
        assert 1 <= reader.reads_ended <= reads and protocol.rest == [], size


class _ToyReader:
    """Reads whole `MSG f` frames itself, as the tap's scanner reads plain deliveries."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.reads_ended = 0

    def fast(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        self.log.extend(("frame", f[3]) for f in frames)
        frames.clear()
        while data.startswith(b"MSG f ", pos):
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            n = int(data[pos:eol].split()[-1])
            if eol + 2 + n + 2 > len(data):
                break
            self.log.append(("fast", data[eol + 2 : eol + 2 + n]))
            pos = eol + 2 + n + 2
        return pos

    def on_frames(self, frames: list[Frame]) -> None:
        self.log.extend(("frame", f[3]) for f in frames)
        self.reads_ended += 1


async def test_it_reads_what_the_server_delivers_byte_exact(nats_server, unique):
    frames: list[Frame] = []
    conn = await wire.connect(nats_server.url, frames.extend)
    conn.subscribe(f"w.{unique}.>")
    await conn.flush()
    nc = await nats.connect(nats_server.url)
    payloads = [b"", b"\xff\xfe\x00\r\n\r\nMSG fake 1 3\r\n", bytes(range(256)) * 2048]  # 512 KiB
    for i, data in enumerate(payloads):
        await nc.publish(f"w.{unique}.{i}", data, headers={"Id": str(i)} if i else None)
    await nc.flush()
    for _ in range(100):
        if len(frames) == len(payloads):
            break
        await asyncio.sleep(0.05)
    await nc.close()
    conn.close()
    assert [f[0] for f in frames] == [f"w.{unique}.{i}".encode() for i in range(3)]
    assert [f[3] for f in frames] == payloads
    assert frames[0][2] is None
    assert parse_headers(frames[2][2] or b"")[2] == {"Id": "2"}


async def test_a_lost_connection_is_reported(nats_server, unique):
    conn = await wire.connect(nats_server.url, lambda frames: None)
    conn.subscribe(f"w.{unique}")
    await conn.flush()
    nats_server.stop()
    try:
        reason = await asyncio.wait_for(conn.lost, 10)
        assert conn.closed and reason is not None
    finally:
        nats_server.start()


async def test_nothing_listening_is_a_clear_error():
    from eventbus.embedded import free_port

    with pytest.raises(OSError):
        await wire.connect(f"nats://127.0.0.1:{free_port()}", lambda frames: None, timeout=2)


@pytest.fixture
def nats_with_password(tmp_path):
    from eventbus.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path / "auth", extra_args=("--user", "tap", "--pass", "s3cret"))
    server.start()
    yield server
    server.stop()


async def test_it_logs_in_with_the_password_in_the_url(nats_with_password, unique):
    port = nats_with_password.port
    frames: list[Frame] = []
    conn = await wire.connect(f"nats://tap:s3cret@127.0.0.1:{port}", frames.extend)
    conn.subscribe(f"a.{unique}")
    await conn.flush()
    nc = await nats.connect(f"nats://tap:s3cret@127.0.0.1:{port}")
    await nc.publish(f"a.{unique}", b"in")
    await nc.flush()
    for _ in range(100):
        if frames:
            break
        await asyncio.sleep(0.05)
    await nc.close()
    conn.close()
    assert [f[3] for f in frames] == [b"in"]
    with pytest.raises(wire.WireError, match=r"(?i)authorization"):
        await wire.connect(f"nats://tap:wrong@127.0.0.1:{port}", lambda frames: None)


async def test_the_tap_reads_a_password_protected_server_with_its_lean_reader(
    nats_with_password, database_url, unique
):
    """The lean reader logs in with what nats-py connected with (the URL's user and password)."""
    from tests.taputil import eventually, stream_events, tap_running

    url = f"nats://tap:s3cret@127.0.0.1:{nats_with_password.port}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = f"AUTH_{unique}"
    await js.add_stream(name=stream, subjects=[f"auth.{unique}"])
    await js.publish(f"auth.{unique}", b"one")
    async with tap_running(url, database_url) as tap:
        rows = await eventually(lambda: stream_events(database_url, stream), what="recorded")
        observer = tap.observers[stream]
        assert isinstance(observer, WireConsumerObserver)
        assert observer.conn is not None  # the URL's password was enough for the lean reader
    await nc.close()
    assert [bytes(r[3]) for r in rows] == [b"one"]
