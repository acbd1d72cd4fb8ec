"""How Flowscope's processes name their NATS servers: `NATS_URL` is one URL or a comma-separated
list of a cluster's servers (nats-py tries each, and fails over to the others on a reconnect)."""

from __future__ import annotations

from typing import Any


def servers(url: str) -> list[str]:
    """`NATS_URL` -> the list nats-py's `connect(servers=...)` takes. Blank entries are dropped;
    a bare `host:port` gets the `nats://` scheme."""
    found = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            continue
        found.append(part if "://" in part else f"nats://{part}")
    if not found:
        raise ValueError("NATS_URL names no server")
    return found


def shown(url: Any) -> str:
    """The server nats-py is on (`connected_url`, a parsed URL) for a log line: scheme, host and
    port, never the credentials it may carry; '' when there is none."""
    if url is None:
        return ""
    host = url.hostname or ""
    return f"{url.scheme}://{host}:{url.port}" if url.port else f"{url.scheme}://{host}"
