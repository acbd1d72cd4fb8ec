"""Managing streams and consumers from a sync Django view: eventbus/admin.py's calls on a
connection of the request's own, each change written to the audit log (configuration before and
after; the server's error when it fails). The web pages (dashboard/pages/manage.py) and the API
(dashboard/api/manage.py) both change things only through here.

The roles are checked by the callers (`require("manage")`, `need(request, "manage")`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import HttpRequest

from dashboard.audit import audited
from eventbus import admin
from eventbus.admin import Admin, AdminError

T = TypeVar("T")
TIMEOUT = 3.0  # seconds, for connecting and for each answer: a page must not hang on NATS

__all__ = ["AdminError", "call"]


def call(op: Callable[[Admin], Awaitable[T]]) -> T:
    """Run `op` on a fresh connection to settings.NATS_URL; AdminError on any failure."""

    async def go() -> T:
        url = str(settings.NATS_URL)
        creds = str(getattr(settings, "NATS_CREDS", "") or "")
        async with admin.connect(url, creds, timeout=TIMEOUT) as a:
            return await op(a)

    return async_to_sync(go)()


def stream_info(name: str) -> dict[str, Any]:
    return call(lambda a: a.stream_info(name))


def consumer_info(stream: str, name: str) -> dict[str, Any]:
    return call(lambda a: a.consumer_info(stream, name))


def create_stream(request: HttpRequest, config: dict[str, Any]) -> dict[str, Any]:
    name = str(config.get("name", ""))
    with audited(
        request, "stream.create", f"stream {name}", {"before": None, "requested": config}
    ) as info:
        info["after"] = created = call(lambda a: a.create_stream(config))
    return created


def update_stream(request: HttpRequest, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` (keys of JetStream's stream configuration) over the current one."""
    with audited(request, "stream.update", f"stream {name}", {"changes": changes}) as info:

        async def op(a: Admin) -> dict[str, Any]:
            info["before"] = before = await a.stream_config(name)
            return await a.update_stream({**before, **changes, "name": name})

        info["after"] = updated = call(op)
    return updated


def delete_stream(request: HttpRequest, name: str) -> None:
    with audited(request, "stream.delete", f"stream {name}") as info:

        async def op(a: Admin) -> None:
            info["before"] = await a.stream_config(name)
            await a.delete_stream(name)

        call(op)
        info["after"] = None


def purge_stream(
    request: HttpRequest,
    name: str,
    subject: str | None = None,
    keep: int | None = None,
    upto_seq: int | None = None,
) -> int:
    wanted = {"subject": subject, "keep": keep, "upto_seq": upto_seq}
    with audited(request, "stream.purge", f"stream {name}", {"request": wanted}) as info:

        async def op(a: Admin) -> int:
            info["before"] = (await a.stream_info(name)).get("state", {})
            return await a.purge_stream(name, subject or None, keep, upto_seq)

        info["purged"] = purged = call(op)
    return purged


def delete_message(request: HttpRequest, name: str, seq: int) -> None:
    with audited(request, "stream.message.delete", f"stream {name} seq {seq}", {"seq": seq}):
        call(lambda a: a.delete_message(name, seq))


def create_consumer(request: HttpRequest, stream: str, config: dict[str, Any]) -> dict[str, Any]:
    target = f"consumer {stream}/{config.get('durable_name', '')}"
    with audited(request, "consumer.create", target, {"before": None, "requested": config}) as info:
        info["after"] = created = call(lambda a: a.create_consumer(stream, config))
    return created


def update_consumer(
    request: HttpRequest, stream: str, name: str, changes: dict[str, Any]
) -> dict[str, Any]:
    with audited(
        request, "consumer.update", f"consumer {stream}/{name}", {"changes": changes}
    ) as info:

        async def op(a: Admin) -> dict[str, Any]:
            info["before"] = before = await a.consumer_config(stream, name)
            return await a.update_consumer(stream, {**before, **changes, "durable_name": name})

        info["after"] = updated = call(op)
    return updated


def delete_consumer(request: HttpRequest, stream: str, name: str) -> None:
    with audited(request, "consumer.delete", f"consumer {stream}/{name}") as info:

        async def op(a: Admin) -> None:
            info["before"] = await a.consumer_config(stream, name)
            await a.delete_consumer(stream, name)

        call(op)
        info["after"] = None


def pause_consumer(request: HttpRequest, stream: str, name: str, until: datetime) -> dict[str, Any]:
    with audited(
        request, "consumer.pause", f"consumer {stream}/{name}", {"until": until.isoformat()}
    ) as info:
        info["result"] = result = call(lambda a: a.pause_consumer(stream, name, until))
    return result


def resume_consumer(request: HttpRequest, stream: str, name: str) -> dict[str, Any]:
    with audited(request, "consumer.resume", f"consumer {stream}/{name}") as info:
        info["result"] = result = call(lambda a: a.resume_consumer(stream, name))
    return result
