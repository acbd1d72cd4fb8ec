"""Stream and consumer configurations (as JetStream reports them) as labelled facts to show.

Limits of -1 or 0 mean "no limit" to the server; durations are nanoseconds."""

from __future__ import annotations

from typing import Any

from dashboard.templatetags.humanize_bytes import human_bytes

Fact = tuple[str, str]

_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def duration(ns: Any) -> str:
    """90 * 60 * 10**9 -> '1 h 30 min'; under a second in ms. The largest unit and the one
    after it only: '7 d', not '7 d 5 s'."""
    if not isinstance(ns, int | float) or ns <= 0:
        return "none"
    seconds = ns / 1e9
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    parts: list[str] = []
    rest = int(seconds)
    for i, (unit, size) in enumerate(_UNITS):
        if rest >= size:
            parts.append(f"{rest // size} {unit}")
            rest %= size
            if i + 1 < len(_UNITS) and rest >= _UNITS[i + 1][1]:
                parts.append(f"{rest // _UNITS[i + 1][1]} {_UNITS[i + 1][0]}")
            break
    return " ".join(parts) or f"{seconds:g} s"


def _limit(value: Any, unit: str = "") -> str:
    if not isinstance(value, int) or value <= 0:
        return "unlimited"
    if unit == "bytes":
        return human_bytes(value)
    return f"{value:,}{unit}"


def stream_config_facts(config: dict[str, Any]) -> list[Fact]:
    """The configuration a stream page shows, in the order people look for it."""
    return [
        ("Subjects", ", ".join(str(s) for s in config.get("subjects") or []) or "none"),
        ("Retention", str(config.get("retention", "limits"))),
        ("Storage", str(config.get("storage", "file"))),
        ("Replicas", str(config.get("num_replicas", 1))),
        ("Max age", duration(config.get("max_age")).replace("none", "unlimited")),
        ("Max bytes", _limit(config.get("max_bytes"), "bytes")),
        ("Max messages", _limit(config.get("max_msgs"))),
        ("Max message size", _limit(config.get("max_msg_size"), "bytes")),
        ("Max per subject", _limit(config.get("max_msgs_per_subject"))),
        ("Discard", str(config.get("discard", "old"))),
        ("Duplicate window", duration(config.get("duplicate_window"))),
        ("Allow direct", "yes" if config.get("allow_direct") else "no"),
    ]


def _deliver_policy(config: dict[str, Any]) -> str:
    policy = str(config.get("deliver_policy", "all"))
    if policy == "by_start_sequence":
        return f"from sequence {config.get('opt_start_seq', '?')}"
    if policy == "by_start_time":
        return f"from {config.get('opt_start_time', '?')}"
    return policy.replace("_", " ")


def consumer_config_facts(config: dict[str, Any]) -> list[Fact]:
    filters = config.get("filter_subjects") or (
        [config["filter_subject"]] if config.get("filter_subject") else []
    )
    durable = config.get("durable_name")
    backoff = config.get("backoff") or []
    facts = [
        ("Filter subjects", ", ".join(str(f) for f in filters) or "all of the stream's"),
        ("Durable", "yes" if durable else "no (ephemeral)"),
        ("Kind", "push" if config.get("deliver_subject") else "pull"),
        ("Ack policy", str(config.get("ack_policy", "explicit"))),
        ("Ack wait", duration(config.get("ack_wait"))),
        ("Max deliver", _limit(config.get("max_deliver"))),
        ("Backoff", ", ".join(duration(b) for b in backoff) or "none"),
        ("Deliver policy", _deliver_policy(config)),
        ("Max ack pending", _limit(config.get("max_ack_pending"))),
    ]
    if config.get("pause_until"):
        facts.append(("Paused until", str(config["pause_until"])))
    return facts
