"""NATS subjects and subject filters, for the event browser's search and the stream forms:
`*` matches exactly one token, `>` one or more tokens at the end.

Pure functions, unit-tested; the search turns a filter into a PostgreSQL regular expression
(`subject ~ ...`) that means exactly what the server means by it.
"""

from __future__ import annotations

import re

MAX_SUBJECT = 1024


class SubjectError(ValueError):
    """A subject filter the server would refuse, with the reason in plain words."""


def validate(pattern: str) -> str:
    """The filter itself, or SubjectError saying what is wrong with it."""
    if not pattern:
        raise SubjectError("the subject is empty")
    if len(pattern) > MAX_SUBJECT:
        raise SubjectError(f"the subject is longer than {MAX_SUBJECT} characters")
    if any(ch.isspace() for ch in pattern):
        raise SubjectError("a subject cannot contain spaces or other whitespace")
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if not token:
            raise SubjectError(
                "a subject cannot have an empty token (two dots, or a dot at an end)"
            )
        if token == ">" and i != len(tokens) - 1:
            raise SubjectError("'>' matches the rest of a subject: it can only be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise SubjectError(f"a wildcard must be a whole token: '{token}'")
    return pattern


def has_wildcard(pattern: str) -> bool:
    return any(t in ("*", ">") for t in pattern.split("."))


def to_regex(pattern: str) -> str:
    """The POSIX regular expression (PostgreSQL `~`) matching what `pattern` matches."""
    parts = []
    for token in validate(pattern).split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", token))
    return "^" + r"\.".join(parts) + "$"


def literal_prefix(pattern: str) -> str:
    """The leading tokens before the first wildcard, with their dot ('' when it starts with
    one): every match starts with it, so `LIKE prefix%` can narrow cheaply first."""
    prefix: list[str] = []
    for token in pattern.split("."):
        if token in ("*", ">"):
            return ".".join(prefix) + "." if prefix else ""
        prefix.append(token)
    return pattern


def matches(pattern: str, subject: str) -> bool:
    """Whether `subject` (a concrete subject) matches the filter `pattern`."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)
