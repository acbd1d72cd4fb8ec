"""Streams as the server describes them, and their rows in flowscope_stream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from nats.aio.client import Client
from psycopg.types.json import Jsonb

from eventbus.observers import choose_observer
from eventbus.records import parse_nats_time


@dataclass
class StreamDesc:
    name: str
    created: datetime
    config: dict[str, Any]
    state: dict[str, Any]

    @property
    def retention(self) -> str:
        return str(self.config.get("retention", "limits"))

    @property
    def subjects(self) -> list[str]:
        return list(self.config.get("subjects") or [])

    @property
    def incarnation(self) -> tuple[str, datetime]:
        return self.name, self.created


class JetStreamError(Exception):
    pass


async def js_api(nc: Client, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(payload or {}).encode(), timeout=5)
    resp: dict[str, Any] = json.loads(reply.data)
    if "error" in resp:
        raise JetStreamError(f"{subject}: {resp['error'].get('description', resp['error'])}")
    return resp


def describe(info: dict[str, Any]) -> StreamDesc:
    created = parse_nats_time(info.get("created"))
    if created is None:
        raise JetStreamError(f"stream info without a creation time: {info.get('config', {})}")
    return StreamDesc(info["config"]["name"], created, info["config"], info.get("state", {}))


@dataclass
class Listing:
    """STREAM.LIST's answer: the streams described, and those it could not describe now (in a
    cluster, a stream waiting for a new leader is named under `missing`: it still exists)."""

    streams: list[StreamDesc]
    missing: set[str]


async def list_streams(nc: Client) -> Listing:
    """Every stream, paging through STREAM.LIST (the server answers a page at a time)."""
    found: list[StreamDesc] = []
    missing: set[str] = set()
    offset = 0
    while True:
        resp = await js_api(nc, "$JS.API.STREAM.LIST", {"offset": offset})
        page = resp.get("streams") or []
        found.extend(describe(info) for info in page)
        absent = [str(name) for name in resp.get("missing") or []]
        missing.update(absent)
        offset += len(page) + len(absent)  # the server pages over every name, missing ones too
        if not (page or absent) or offset >= int(resp.get("total", 0)):
            return Listing(found, missing - {s.name for s in found})


async def upsert_stream(conn: psycopg.AsyncConnection[Any], s: StreamDesc) -> tuple[int, int]:
    """The row of this incarnation (created if new) and its checkpoint: (stream_id, last_seq).
    One statement (one round trip, atomic on its own): discovery runs it for each new or
    changed stream, and a burst of new streams must be observed within milliseconds."""
    mode, note = choose_observer(s.config)
    state = s.state
    cur = await conn.execute(
        """
        WITH row AS (
            INSERT INTO flowscope_stream (name, created, retention, subjects, config,
                observed_by, observation_note, discovered_at, updated_at, deleted_at, messages,
                bytes, first_seq, last_seq, consumer_count)
            VALUES (%(name)s, %(created)s, %(retention)s, %(subjects)s, %(config)s, %(mode)s,
                %(note)s, now(), now(), NULL, %(messages)s, %(bytes)s, %(first_seq)s,
                %(last_seq)s, %(consumers)s)
            ON CONFLICT (name, created) DO UPDATE SET retention = EXCLUDED.retention,
                subjects = EXCLUDED.subjects, config = EXCLUDED.config,
                observed_by = EXCLUDED.observed_by, observation_note = EXCLUDED.observation_note,
                updated_at = now(), deleted_at = NULL
            RETURNING id
        ), older AS (  -- an earlier incarnation of the name is gone
            UPDATE flowscope_stream SET deleted_at = now() WHERE name = %(name)s
                AND id <> (SELECT id FROM row) AND deleted_at IS NULL
        ), new_checkpoint AS (
            INSERT INTO flowscope_checkpoint (stream_id, last_seq, recorded, updated_at)
            SELECT id, 0, 0, now() FROM row ON CONFLICT DO NOTHING RETURNING last_seq
        )
        SELECT row.id, COALESCE(
            (SELECT last_seq FROM new_checkpoint),
            (SELECT c.last_seq FROM flowscope_checkpoint c WHERE c.stream_id = row.id)
        ) FROM row
        """,
        {"name": s.name, "created": s.created, "retention": s.retention,
         "subjects": Jsonb(s.subjects), "config": Jsonb(s.config), "mode": mode, "note": note,
         "messages": state.get("messages", 0), "bytes": state.get("bytes", 0),
         "first_seq": state.get("first_seq", 0), "last_seq": state.get("last_seq", 0),
         "consumers": state.get("consumer_count", 0)},
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1] or 0)  # type: ignore[call-overload]


async def checkpoint(conn: psycopg.AsyncConnection[Any], stream_id: int) -> int:
    cur = await conn.execute(
        "SELECT last_seq FROM flowscope_checkpoint WHERE stream_id = %s", (stream_id,)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


async def advance_checkpoint(conn: psycopg.AsyncConnection[Any], stream_id: int, seq: int) -> int:
    """Move the checkpoint forward to `seq` (never back); returns the checkpoint now."""
    cur = await conn.execute(
        "UPDATE flowscope_checkpoint SET last_seq = GREATEST(last_seq, %s) WHERE stream_id = %s "
        "RETURNING last_seq",
        (seq, stream_id),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else seq


async def mark_deleted(conn: psycopg.AsyncConnection[Any], live: set[str]) -> list[str]:
    """Streams recorded as live that the server no longer has: mark them deleted."""
    cur = await conn.execute(
        "UPDATE flowscope_stream SET deleted_at = now() WHERE deleted_at IS NULL "
        "AND NOT (name = ANY(%s)) RETURNING name",
        (list(live),),
    )
    return [str(r[0]) for r in await cur.fetchall()]  # type: ignore[call-overload]
