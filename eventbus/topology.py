"""Topology discovery: who is on the bus, as NATS itself tells it.

Every `INTERVAL` seconds the tap asks
- `$SRV.INFO` and `$SRV.STATS` (ADR-32, the NATS micro service API): every instance of every
  micro service answers with its name and its endpoints' subjects (and request counts);
- `$SYS.REQ.ACCOUNT.PING.CONNZ` with subscriptions: every server answers with the account's
  client connections, their names and their subscriptions. A server may refuse it (an account
  without the right, an old server) or nobody answers: the round says so and goes on.

It gathers the replies for a short while (scatter-gather: no one knows how many will answer),
turns them into rows with the pure functions `service_rows` and `connection_rows`, and upserts
them into flowscope_endpoint; how each source fared goes to flowscope_discovery_probe, which the
topology page shows. Nothing from the wire is trusted: names and subjects are bounded in length
and number.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from nats.aio.client import Client
from psycopg.types.json import Jsonb

from eventbus.aio import wait_event

log = logging.getLogger("flowscope.topology")

INTERVAL = 15.0  # seconds between rounds
GATHER = 1.0  # seconds to collect the answers of one scatter-gather request
KEEP_FOR = timedelta(days=1)  # rows not seen for this long are deleted
MAX_NAME = 255
MAX_SUBJECT = 512
MAX_SUBJECTS = 200  # per endpoint row
CONNZ_LIMIT = 1024  # connections per server and answer
CONNZ_PAGES = 32  # pages asked for at most: 32,768 connections per server
# Flowscope's own connections (the tap's, the web processes' digest subscriptions) are not the
# applications': left out of the topology.
OWN_CONNECTIONS = ("flowscope-tap-", "flowscope-web")


@dataclass(frozen=True)
class EndpointRow:
    kind: str  # "service" | "connection"
    name: str
    subjects: list[str]
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeResult:
    source: str  # "srv" | "connz"
    ok: bool
    note: str


def _text(value: Any, limit: int) -> str:
    return str(value if value is not None else "")[:limit]


def _load(reply: bytes | str | dict[str, Any]) -> dict[str, Any] | None:
    """A reply's JSON object, or None for anything else (a stray or broken answer)."""
    if isinstance(reply, dict):
        return reply
    try:
        data = json.loads(reply)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _bounded(subjects: Iterable[str]) -> list[str]:
    return sorted({_text(s, MAX_SUBJECT) for s in subjects if s})[:MAX_SUBJECTS]


def service_rows(
    info_replies: Iterable[bytes | str | dict[str, Any]],
    stats_replies: Iterable[bytes | str | dict[str, Any]] = (),
) -> list[EndpointRow]:
    """`$SRV.INFO` (and `$SRV.STATS`) answers -> one row per service name, its instances
    merged: the endpoints' subjects, versions, instance count, requests and errors per subject."""
    services: dict[str, dict[str, Any]] = {}
    for reply in info_replies:
        data = _load(reply)
        if data is None or data.get("type") != "io.nats.micro.v1.info_response":
            continue
        name = _text(data.get("name"), MAX_NAME)
        if not name:
            continue
        s = services.setdefault(
            name,
            {
                "subjects": set(),
                "instances": set(),
                "versions": set(),
                "description": "",
                "requests": {},
                "errors": {},
            },
        )
        s["instances"].add(_text(data.get("id"), 64))
        s["versions"].add(_text(data.get("version"), 64))
        s["description"] = s["description"] or _text(data.get("description"), 500)
        for ep in data.get("endpoints") or []:
            if isinstance(ep, dict) and ep.get("subject"):
                s["subjects"].add(_text(ep["subject"], MAX_SUBJECT))
    for reply in stats_replies:
        data = _load(reply)
        if data is None or data.get("type") != "io.nats.micro.v1.stats_response":
            continue
        s = services.get(_text(data.get("name"), MAX_NAME))  # type: ignore[assignment]
        if s is None:
            continue
        for ep in data.get("endpoints") or []:
            if not isinstance(ep, dict) or not ep.get("subject"):
                continue
            subject = _text(ep["subject"], MAX_SUBJECT)
            for key, out in (("num_requests", "requests"), ("num_errors", "errors")):
                value = ep.get(key)
                if isinstance(value, int):
                    s[out][subject] = s[out].get(subject, 0) + value
    return [
        EndpointRow(
            kind="service",
            name=name,
            subjects=_bounded(s["subjects"]),
            detail={
                "instances": len(s["instances"]),
                "versions": sorted(v for v in s["versions"] if v)[:10],
                "description": s["description"],
                "requests": dict(sorted(s["requests"].items())[:MAX_SUBJECTS]),
                "errors": dict(sorted(s["errors"].items())[:MAX_SUBJECTS]),
            },
        )
        for name, s in sorted(services.items())
    ]


def _application_subject(subject: str, keep: set[str]) -> bool:
    """An application's subscription, not plumbing: inboxes, `$SRV`, `$JS`, `$SYS` are left
    out, except subjects in `keep` (push consumers' deliver subjects, often inboxes)."""
    return subject in keep or not (subject.startswith("$") or subject.startswith("_INBOX."))


def connection_rows(
    connz_replies: Iterable[bytes | str | dict[str, Any]], keep: Iterable[str] = ()
) -> tuple[list[EndpointRow], ProbeResult]:
    """`$SYS.REQ.ACCOUNT.PING.CONNZ` answers (one per server) -> one row per connection name,
    its connections merged: the subjects it subscribes to (application ones, and any in `keep`),
    the queue groups, how many connections. Unnamed connections and the tap's own are left out.
    The ProbeResult says whether any server answered with data or why not."""
    keep_set = set(keep)
    named: dict[str, dict[str, Any]] = {}
    answered, errors = 0, []
    seen: dict[str, int] = {}  # server -> connections listed in its answers (pages)
    totals: dict[str, int] = {}  # server -> connections it has
    for reply in connz_replies:
        data = _load(reply)
        if data is None:
            continue
        if data.get("error"):
            err = data["error"]
            errors.append(_text(err.get("description") if isinstance(err, dict) else err, 200))
            continue
        connz = data.get("data")
        if not isinstance(connz, dict):
            continue
        answered += 1
        conns = [c for c in connz.get("connections") or [] if isinstance(c, dict)]
        server = _text(connz.get("server_id"), 64)
        seen[server] = seen.get(server, 0) + len(conns)
        totals[server] = max(totals.get(server, 0), int(connz.get("total") or 0))
        for conn in conns:
            name = _text(conn.get("name"), MAX_NAME)
            if not name or name.startswith(OWN_CONNECTIONS):
                continue
            entry = named.setdefault(
                name,
                {
                    "subjects": set(),
                    "queues": set(),
                    "cids": set(),
                    "lang": _text(conn.get("lang"), 32),
                },
            )
            entry["cids"].add((_text(connz.get("server_id"), 64), conn.get("cid")))
            details = conn.get("subscriptions_list_detail")
            if isinstance(details, list):
                subs = [(d.get("subject"), d.get("qgroup")) for d in details if isinstance(d, dict)]
            else:
                subs = [(s, None) for s in conn.get("subscriptions_list") or []]
            for subject, queue in subs:
                subject = _text(subject, MAX_SUBJECT)
                if subject and _application_subject(subject, keep_set):
                    entry["subjects"].add(subject)
                    if queue:
                        entry["queues"].add(_text(queue, MAX_NAME))
    rows = [
        EndpointRow(
            kind="connection",
            name=name,
            subjects=_bounded(e["subjects"]),
            detail={
                "connections": len(e["cids"]),
                "queue_groups": sorted(e["queues"])[:20],
                "lang": e["lang"],
            },
        )
        for name, e in sorted(named.items())
    ]
    if answered:
        note = f"{len(totals)} server(s) answered"
        if any(seen.get(server, 0) < total for server, total in totals.items()):
            listed = min(seen.get(server, 0) for server in totals)
            note += f"; only the first {listed:,} connections of a server are listed"
        return rows, ProbeResult("connz", True, note)
    if errors:
        return rows, ProbeResult("connz", False, "the server refused: " + "; ".join(errors[:3]))
    return rows, ProbeResult(
        "connz", False, "no server answered (this account may not ask, or the server is too old)"
    )


async def gather(
    nc: Client, subject: str, payload: bytes, stop: asyncio.Event, timeout: float = GATHER
) -> list[bytes]:
    """Publish a request and collect every answer that arrives within `timeout` (or until
    `stop`). Bounded: at most 10,000 answers are kept."""
    inbox = nc.new_inbox()
    answers: list[bytes] = []

    async def on_answer(msg: Any) -> None:
        if len(answers) < 10_000:
            answers.append(bytes(msg.data))

    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(subject, payload, reply=inbox)
        await nc.flush(timeout=max(1, round(timeout)))
        await wait_event(stop, timeout)
    finally:
        await sub.unsubscribe()
    return answers


async def deliver_subjects(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The deliver subjects of the push consumers recorded by the lag sampler: a connection
    subscribed to one is that consumer's client, even where the subject is an inbox."""
    cur = await conn.execute(
        "SELECT DISTINCT config->>'deliver_subject' FROM flowscope_consumer "
        "WHERE deleted_at IS NULL AND coalesce(config->>'deliver_subject', '') <> ''"
    )
    return [r[0] for r in await cur.fetchall()]


async def discover(
    nc: Client, keep: Iterable[str], stop: asyncio.Event
) -> tuple[list[EndpointRow], list[ProbeResult]]:
    """One round of asking NATS: micro services, then connections."""
    info = await gather(nc, "$SRV.INFO", b"", stop)
    stats = await gather(nc, "$SRV.STATS", b"", stop)
    services = service_rows(info, stats)
    srv = ProbeResult(
        "srv", True, f"{len(services)} micro service(s) answered" if services else "none answered"
    )
    connz = await connz_pages(nc, stop)
    connections, probe = connection_rows(connz, keep)
    return services + connections, [srv, probe]


def more_connections(replies: Iterable[bytes | str | dict[str, Any]], offset: int) -> bool:
    """Whether any server's CONNZ answer (asked from `offset`) says it has more than it sent."""
    for reply in replies:
        data = _load(reply)
        connz = data.get("data") if data else None
        if isinstance(connz, dict):
            sent = len(connz.get("connections") or [])
            if sent and int(connz.get("total") or 0) > offset + sent:
                return True
    return False


async def connz_pages(
    nc: Client, stop: asyncio.Event, limit: int = CONNZ_LIMIT, pages: int = CONNZ_PAGES
) -> list[bytes]:
    """Every server's connections, `limit` per answer, paged with `offset` while a server has
    more (a server answers each page; one with fewer connections answers an empty one)."""
    replies: list[bytes] = []
    for page in range(pages):
        request = {"subscriptions": True, "subscriptions_detail": True, "limit": limit,
                   "offset": page * limit}  # fmt: skip
        answers = await gather(
            nc, "$SYS.REQ.ACCOUNT.PING.CONNZ", json.dumps(request).encode(), stop
        )
        replies += answers
        if stop.is_set() or not more_connections(answers, page * limit):
            break
    return replies


async def write(
    conn: psycopg.AsyncConnection[Any],
    rows: list[EndpointRow],
    probes: list[ProbeResult],
    now: datetime,
) -> None:
    """Upsert the rows and the probes (idempotent), forget rows unseen for KEEP_FOR."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO flowscope_endpoint (kind, name, subjects, detail, last_seen) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, name) DO UPDATE SET "
            "subjects = EXCLUDED.subjects, detail = EXCLUDED.detail, "
            "last_seen = EXCLUDED.last_seen",
            [(r.kind, r.name, Jsonb(r.subjects), Jsonb(r.detail), now) for r in rows],
        )
        await cur.executemany(
            "INSERT INTO flowscope_discovery_probe (source, ok, note, checked_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (source) DO UPDATE SET ok = EXCLUDED.ok, "
            "note = EXCLUDED.note, checked_at = EXCLUDED.checked_at",
            [(p.source, p.ok, p.note, now) for p in probes],
        )
        await cur.execute("DELETE FROM flowscope_endpoint WHERE last_seen < %s", (now - KEEP_FOR,))


async def run(
    nc: Client, database_url: str, stop: asyncio.Event, interval: float = INTERVAL
) -> None:
    """Discover every `interval` seconds until `stop`; a failed round is logged and retried
    at the next one (the supervisor restarts the loop only if something unexpected escapes)."""
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if nc.is_connected:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            database_url,
                            autocommit=True,
                            application_name="flowscope-tap",
                            connect_timeout=5,
                        )
                    rows, probes = await discover(nc, await deliver_subjects(conn), stop)
                    if not stop.is_set():
                        await write(conn, rows, probes, datetime.now(UTC))
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("topology: PostgreSQL unavailable (%s): retrying", exc)
                if conn is not None:
                    await conn.close()
                conn = None
            except Exception as exc:  # a NATS timeout, say: the next round asks again
                log.warning("topology: discovery round failed (%r)", exc)
            if await wait_event(stop, max(0.0, interval - (time.monotonic() - started))):
                break
    finally:
        if conn is not None:
            await conn.close()
