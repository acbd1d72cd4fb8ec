"""Managing streams and consumers: JetStream's API by plain requests (issue #14).

Plain asyncio + nats-py, no Django. `connect()` opens a short-lived connection and yields an
`Admin`, whose calls send JetStream API requests (`$JS.API.STREAM.CREATE.<name>` ...) with the
configuration as JetStream's own JSON (durations in nanoseconds, -1 for no limit), so what is
sent, returned and audited is exactly what the server holds.

Everything that goes wrong is an `AdminError` carrying field errors: what we refuse before
asking (`validate_stream`, `validate_consumer`), what the server refuses (its err_code and
description mapped to the field it concerns, in plain words), a stream or consumer that is not
there (`NotFound`), and a server that does not answer (`Unreachable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import nats
from nats.errors import Error as NatsError

from eventbus import subjects
from eventbus.natsconn import servers

API = "$JS.API"
MAX_NAME = 255
MAX_SUBJECTS = 1000
NS = 1_000_000_000
# Beyond these a limit is a typing mistake, not a plan (the server would take most of them).
MAX_LIMITS: dict[str, int] = {
    "max_msgs": 10**15,
    "max_bytes": 2**60,  # an exbibyte
    "max_msg_size": 2**30,  # a gibibyte: NATS' max_payload is at most 64 MiB
    "max_msgs_per_subject": 10**15,
    "max_consumers": 10**6,
    "max_deliver": 10**9,
    "max_ack_pending": 10**9,
    "max_waiting": 10**6,
}
MAX_DURATION_NS = 100 * 365 * 86400 * NS  # a century
DURATIONS = ("max_age", "duplicate_window", "ack_wait", "inactive_threshold")
RETENTIONS = ("limits", "interest", "workqueue")
STORAGES = ("file", "memory")
DISCARDS = ("old", "new")
DELIVER_POLICIES = (
    "all",
    "last",
    "new",
    "by_start_sequence",
    "by_start_time",
    "last_per_subject",
)
ACK_POLICIES = ("explicit", "all", "none")
REPLAY_POLICIES = ("instant", "original")
# What an existing stream's configuration may not change (the server says so too).
STREAM_FIXED = ("name", "storage")
CONSUMER_FIXED = ("durable_name", "deliver_policy", "opt_start_seq", "ack_policy")


NO_SUCH_MESSAGE = "There is no message with this sequence (deleted, purged or never stored)."


class AdminError(Exception):
    """A change that did not happen. `errors` pairs a field (None: the whole request) with a
    message in plain words; `err_code` is JetStream's, when the server refused."""

    status = 400

    def __init__(self, errors: list[tuple[str | None, str]], err_code: int | None = None):
        self.errors = errors
        self.err_code = err_code
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in errors))


class Invalid(AdminError):
    """Refused before asking the server."""


class Refused(AdminError):
    """The server refused it."""


class NotFound(AdminError):
    status = 404


class Unreachable(AdminError):
    """NATS did not connect or did not answer."""

    status = 503


# --- validation (pure) ---------------------------------------------------------------------

# NATS subject rules: one module for the event browser's filters and these forms
validate_subject = subjects.validate
SubjectError = subjects.SubjectError


def name_problem(name: str, what: str = "stream") -> str | None:
    if not name:
        return f"Give the {what} a name."
    if len(name) > MAX_NAME:
        return f"A {what} name is at most {MAX_NAME} characters."
    if any(ch.isspace() for ch in name):
        return f"A {what} name cannot contain spaces."
    bad = sorted({ch for ch in name if ch in ".*>/\\"})
    if bad:
        return f"A {what} name cannot contain {' or '.join(repr(c) for c in bad)}."
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"A {what} name cannot contain control characters."
    return None


def subjects_problem(subjects: list[str], required: bool = True) -> str | None:
    if not subjects:
        return "Give at least one subject, one per line." if required else None
    if len(subjects) > MAX_SUBJECTS:
        return f"At most {MAX_SUBJECTS:,} subjects ({len(subjects):,} given)."
    for s in subjects:
        try:
            validate_subject(s)
        except SubjectError as exc:
            return f"{s[:80]!r}: {exc}."
    if len(set(subjects)) != len(subjects):
        dup = next(s for s in subjects if subjects.count(s) > 1)
        return f"{dup[:80]!r} is given twice."
    return None


def number_problem(key: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "Must be a whole number."
    if key in DURATIONS:
        if value < 0:
            return "Cannot be negative (0: no limit)."
        if value > MAX_DURATION_NS:
            return "More than a century: that is no limit, leave it empty."
        return None
    if value < -1 or (value == 0 and key in ("max_deliver",)):
        return "Cannot be negative (leave it empty, or -1, for no limit)."
    if key in MAX_LIMITS and value > MAX_LIMITS[key]:
        return f"Absurdly large (at most {MAX_LIMITS[key]:,})."
    return None


def _choice_problem(value: Any, choices: tuple[str, ...]) -> str | None:
    if value not in choices:
        return f"One of {', '.join(choices)}."
    return None


def validate_stream(config: dict[str, Any]) -> None:
    """Invalid with every field error found, or nothing."""
    errors: list[tuple[str | None, str]] = []
    name = config.get("name")
    problem = name_problem(name if isinstance(name, str) else "")
    if problem:
        errors.append(("name", problem))
    subjects = config.get("subjects")
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        errors.append(("subjects", "A list of subjects."))
    elif problem := subjects_problem(subjects):
        errors.append(("subjects", problem))
    for key, choices in (("retention", RETENTIONS), ("storage", STORAGES), ("discard", DISCARDS)):
        if key in config and (problem := _choice_problem(config[key], choices)):
            errors.append((key, problem))
    for key in (*DURATIONS, *MAX_LIMITS):
        if key in config and (problem := number_problem(key, config[key])):
            errors.append((key, problem))
    replicas = config.get("num_replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        errors.append(("num_replicas", "From 1 to 5."))
    desc = config.get("description")
    if desc is not None and (not isinstance(desc, str) or len(desc) > 4096):
        errors.append(("description", "Text of at most 4,096 characters."))
    if errors:
        raise Invalid(errors)


def validate_consumer(config: dict[str, Any]) -> None:
    errors: list[tuple[str | None, str]] = []
    name = config.get("durable_name")
    if problem := name_problem(name if isinstance(name, str) else "", "consumer"):
        errors.append(("name", problem))
    filters = config.get("filter_subjects", [])
    if not isinstance(filters, list) or not all(isinstance(s, str) for s in filters):
        errors.append(("filter_subjects", "A list of subjects."))
    elif problem := subjects_problem(filters, required=False):
        errors.append(("filter_subjects", problem))
    for key, choices in (
        ("deliver_policy", DELIVER_POLICIES),
        ("ack_policy", ACK_POLICIES),
        ("replay_policy", REPLAY_POLICIES),
    ):
        if key in config and (problem := _choice_problem(config[key], choices)):
            errors.append((key, problem))
    for key in (*DURATIONS, *MAX_LIMITS):
        if key in config and (problem := number_problem(key, config[key])):
            errors.append((key, problem))
    if config.get("deliver_policy") == "by_start_sequence":
        seq = config.get("opt_start_seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            errors.append(("opt_start_seq", "Give the sequence to start from (1 or more)."))
    if errors:
        raise Invalid(errors)


# --- the server's refusals, in plain words ----------------------------------------------------

# err_code -> (field, plain words); None keeps the server's own description.
_BY_CODE: dict[int, tuple[str | None, str | None]] = {
    10065: ("subjects", "These subjects overlap with another stream's subjects."),
    10058: ("name", "A stream with this name already exists (with another configuration)."),
    10056: ("name", "The stream's name does not match the request."),
    10074: ("num_replicas", "This server is not clustered: it takes 1 replica only."),
    10148: ("name", "A consumer with this name already exists."),
    10149: ("name", "There is no such consumer to update."),
    10057: ("seq", "There is no message with this sequence."),
    10094: ("opt_start_seq", None),
    10003: (None, None),
}
# 10052 (stream) and 10012 (consumer) cover many refusals: the description names the field.
_BY_WORDS: list[tuple[str, str, str | None]] = [
    (
        "retention",
        "retention",
        "JetStream does not change a stream's retention to or from "
        "work queue: create a new stream instead.",
    ),
    (
        "storage type",
        "storage",
        "JetStream does not change a stream's storage: create a new stream instead.",
    ),
    ("duplicates window", "duplicate_window", None),
    ("max age", "max_age", None),
    ("replicas", "num_replicas", None),
    ("overlaps", "subjects", None),
    ("subject", "subjects", None),
    ("ack policy", "ack_policy", "A consumer's ack policy cannot be changed."),
    ("deliver policy", "deliver_policy", "A consumer's deliver policy cannot be changed."),
    ("filter", "filter_subjects", None),
    ("max deliver", "max_deliver", None),
    ("ack wait", "ack_wait", None),
    ("max ack pending", "max_ack_pending", None),
    ("max msgs per subject", "max_msgs_per_subject", None),
    ("max msg size", "max_msg_size", None),
    ("max bytes", "max_bytes", None),
    ("max msgs", "max_msgs", None),
    ("discard", "discard", None),
    ("description", "description", None),
]


def _sentence(text: str) -> str:
    text = text.strip() or "refused"
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def server_error(error: dict[str, Any]) -> AdminError:
    """JetStream's `{"code", "err_code", "description"}` as the AdminError to raise."""
    code = int(error.get("err_code") or 0)
    description = str(error.get("description") or "refused")
    if int(error.get("code") or 0) == 404 or code in (10059, 10014):
        return NotFound([(None, _sentence(description))], code)
    field, words = _BY_CODE.get(code, (None, None))
    if field is None and code not in _BY_CODE:
        lowered = description.lower()
        for needle, key, plain in _BY_WORDS:
            if needle in lowered:
                field, words = key, plain
                break
    return Refused([(field, words or _sentence(description))], code)


# --- the calls ---------------------------------------------------------------------------------


def rfc3339(value: datetime) -> str:
    """A time as NATS writes one (UTC, `Z`)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Admin:
    """JetStream's management calls over one connection."""

    def __init__(self, nc: Any, timeout: float = 5.0):
        self.nc = nc
        self.timeout = timeout

    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self.nc.request(f"{API}.{subject}", payload, timeout=self.timeout)
        except nats.errors.NoRespondersError as exc:
            raise Unreachable(
                [(None, "JetStream did not answer: is it enabled on this NATS server?")]
            ) from exc
        except (TimeoutError, NatsError, OSError) as exc:
            raise Unreachable(
                [
                    (
                        None,
                        f"NATS did not answer within {self.timeout:g} s "
                        f"({type(exc).__name__}); nothing was changed that "
                        "Flowscope knows of.",
                    )
                ]
            ) from exc
        reply: dict[str, Any] = json.loads(msg.data)
        if "error" in reply:
            raise server_error(reply["error"])
        return reply

    # streams
    async def stream_info(self, name: str) -> dict[str, Any]:
        return await self._api(f"STREAM.INFO.{name}")

    async def stream_config(self, name: str) -> dict[str, Any]:
        config: dict[str, Any] = (await self.stream_info(name))["config"]
        return config

    async def create_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        validate_stream(config)
        reply = await self._api(f"STREAM.CREATE.{config['name']}", config)
        created: dict[str, Any] = reply["config"]
        return created

    async def update_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """The whole new configuration (as `stream_config` returned it, changed)."""
        validate_stream(config)
        reply = await self._api(f"STREAM.UPDATE.{config['name']}", config)
        updated: dict[str, Any] = reply["config"]
        return updated

    async def delete_stream(self, name: str) -> None:
        _check_name(name)
        await self._api(f"STREAM.DELETE.{name}")

    async def purge_stream(
        self,
        name: str,
        subject: str | None = None,
        keep: int | None = None,
        upto_seq: int | None = None,
    ) -> int:
        """Purge all, or only `subject`'s messages, keeping the newest `keep`, or those before
        sequence `upto_seq` (the server's `seq`: up to but not including it). Returns how
        many went."""
        _check_name(name)
        body = purge_request(subject, keep, upto_seq)
        reply = await self._api(f"STREAM.PURGE.{name}", body)
        return int(reply.get("purged", 0))

    async def delete_message(self, name: str, seq: int) -> None:
        _check_name(name)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise Invalid([("seq", "A sequence is a whole number from 1.")])
        try:
            await self._api(f"STREAM.MSG.DELETE.{name}", {"seq": seq})
        except AdminError as exc:
            if exc.err_code not in (10057, 10037) and "sequence" not in str(exc).lower():
                raise
            raise Refused([("seq", NO_SUCH_MESSAGE)], exc.err_code) from exc

    # consumers
    async def consumer_info(self, stream: str, name: str) -> dict[str, Any]:
        return await self._api(f"CONSUMER.INFO.{stream}.{name}")

    async def consumer_config(self, stream: str, name: str) -> dict[str, Any]:
        config: dict[str, Any] = (await self.consumer_info(stream, name))["config"]
        return config

    async def _put_consumer(
        self, stream: str, config: dict[str, Any], action: str
    ) -> dict[str, Any]:
        _check_name(stream)
        validate_consumer(config)
        name = config["durable_name"]
        body = {"stream_name": stream, "config": config, "action": action}
        reply = await self._api(f"CONSUMER.CREATE.{stream}.{name}", body)
        result: dict[str, Any] = reply["config"]
        return result

    async def create_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """A durable pull consumer (`durable_name`); refused if the name is taken."""
        return await self._put_consumer(stream, config, "create")

    async def update_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        return await self._put_consumer(stream, config, "update")

    async def delete_consumer(self, stream: str, name: str) -> None:
        _check_name(stream)
        _check_name(name, "consumer")
        await self._api(f"CONSUMER.DELETE.{stream}.{name}")

    async def pause_consumer(self, stream: str, name: str, until: datetime) -> dict[str, Any]:
        """Deliver nothing until `until` (nats-server 2.11+)."""
        _check_name(stream)
        _check_name(name, "consumer")
        if until.tzinfo is None:
            raise Invalid([("until", "Give the time with its offset.")])
        if until <= datetime.now(UTC):
            raise Invalid([("until", "Pause until a time in the future.")])
        return await self._api(f"CONSUMER.PAUSE.{stream}.{name}", {"pause_until": rfc3339(until)})

    async def resume_consumer(self, stream: str, name: str) -> dict[str, Any]:
        _check_name(stream)
        _check_name(name, "consumer")
        return await self._api(f"CONSUMER.PAUSE.{stream}.{name}", {})


def _check_name(name: str, what: str = "stream") -> None:
    """A name going into an API subject: one token, or the request would go elsewhere."""
    if problem := name_problem(name, what):
        raise NotFound([(None, problem)])  # no stream or consumer can have that name


def purge_request(subject: str | None, keep: int | None, upto_seq: int | None) -> dict[str, Any]:
    errors: list[tuple[str | None, str]] = []
    body: dict[str, Any] = {}
    if subject:
        try:
            body["filter"] = validate_subject(subject)
        except SubjectError as exc:
            errors.append(("subject", _sentence(str(exc))))
    if keep is not None and upto_seq is not None:
        errors.append(("keep", "Keep the newest N or purge up to a sequence, not both."))
    for key, value, least in (("keep", keep, 0), ("seq", upto_seq, 1)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            errors.append((key, f"A whole number from {least}."))
        else:
            body[key] = value
    if errors:
        raise Invalid(errors)
    return body


@asynccontextmanager
async def connect(url: str, creds: str = "", timeout: float = 3.0) -> AsyncIterator[Admin]:
    """A short-lived connection for a few calls; Unreachable if NATS does not answer."""

    async def quiet(exc: Exception) -> None:  # the failure is raised below, not logged twice
        return None

    options: dict[str, Any] = {
        "connect_timeout": timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "name": "flowscope-admin",
        "error_cb": quiet,
    }
    if creds:
        options["user_credentials"] = creds
    try:
        async with asyncio.timeout(2 * timeout):  # nats-py may keep trying a dead server
            nc = await nats.connect(servers(url), **options)
    except Exception as exc:  # refused, timed out, no servers, bad credentials
        raise Unreachable(
            [
                (
                    None,
                    f"Cannot reach NATS at {url} ({type(exc).__name__}: "
                    f"{str(exc) or 'no answer'}). Nothing was changed.",
                )
            ]
        ) from exc
    try:
        yield Admin(nc, timeout)
    finally:
        with contextlib.suppress(Exception):  # a connection the server dropped: nothing to do
            await nc.close()
