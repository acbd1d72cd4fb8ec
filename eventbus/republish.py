"""Turning a stream's RePublish on or off for the tap (ADR-28): the one way to observe a
work-queue stream with sequences, since such a stream admits no second consumer. It changes the
stream's configuration, so only an admin does it, on purpose."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from eventbus.registry import JetStreamError, js_api


def republish_config(stream: str, prefix: str, headers_only: bool) -> dict[str, Any]:
    """Every stored message, republished under `<prefix>.republish.<stream>.<subject>`."""
    return {"src": ">", "dest": f"{prefix}.republish.{stream}.>", "headers_only": headers_only}


async def set_republish(
    nc: Client, stream: str, enabled: bool, prefix: str = "flowscope", headers_only: bool = False
) -> dict[str, Any]:
    """Update the stream's config; returns the new config. Refuses to replace a RePublish
    that someone else configured (it may feed an application)."""
    info = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}")
    config: dict[str, Any] = dict(info["config"])
    current = config.get("republish") or {}
    ours = republish_config(stream, prefix, headers_only)
    if current and current.get("dest") != ours["dest"]:
        raise JetStreamError(
            f"stream {stream} already republishes to {current.get('dest')!r}: not replacing it"
        )
    if enabled:
        config["republish"] = ours
    else:
        config.pop("republish", None)
    resp = await js_api(nc, f"$JS.API.STREAM.UPDATE.{stream}", config)
    new: dict[str, Any] = resp["config"]
    return new
