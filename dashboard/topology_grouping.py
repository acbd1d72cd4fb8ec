"""Subjects grouped by their leading tokens, so a graph of 10,000 subjects stays readable; and
NATS subject pattern matching. Pure functions: no database, no Django."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

DEPTH = 2  # tokens a group keeps: orders.created.eu and orders.created.us -> orders.created.>
MAX_CHILDREN = 12  # a prefix with more distinct next tokens than this collapses to prefix.>
MAX_GROUPS = 48  # more groups than this: group by fewer tokens


def _group(subjects: set[str], depth: int, max_children: int) -> dict[str, str]:
    children: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for s in subjects:
        tokens = s.split(".")[:depth]
        for i, token in enumerate(tokens):
            children[tuple(tokens[:i])].add(token)
    out: dict[str, str] = {}
    for s in subjects:
        tokens = s.split(".")
        for i in range(min(depth, len(tokens))):
            if len(children[tuple(tokens[:i])]) > max_children:
                out[s] = ".".join([*tokens[:i], ">"])
                break
        else:
            head = tokens[:depth]
            deeper = len(tokens) > depth and head[-1] != ">"
            out[s] = ".".join(head) + (".>" if deeper else "")
    return out


def group_subjects(
    subjects: Iterable[str],
    depth: int = DEPTH,
    max_children: int = MAX_CHILDREN,
    max_groups: int = MAX_GROUPS,
) -> dict[str, str]:
    """Each subject (or subject pattern) -> the pattern of its group.

    A group keeps the first `depth` tokens (`orders.created.eu` -> `orders.created.>`); where a
    prefix has more than `max_children` distinct next tokens (`user.<id>` for 10,000 ids), they
    all collapse to `prefix.>` (`user.>`). If that still leaves more than `max_groups` groups,
    it groups by one token fewer. So the result has at most `max_children ** depth` groups and,
    unless one token already gives more, at most `max_groups`."""
    unique = {s for s in subjects if s}
    groups: dict[str, str] = {}
    for d in range(max(1, depth), 0, -1):
        groups = _group(unique, d, max_children)
        if len(set(groups.values())) <= max_groups:
            break
    return groups


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the literal `subject` matches the NATS `pattern` (`*` one token, `>` the rest)."""
    return patterns_overlap(pattern, subject)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some literal subject matches both NATS patterns `a` and `b`."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return (x is not None) and (y is not None)
        if x is None or y is None:
            return False
        if x != y and x != "*" and y != "*":
            return False
    return True
