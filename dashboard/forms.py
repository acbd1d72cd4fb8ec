"""The management forms (issue #14): a stream, a consumer, a purge, a deletion confirmed by
typing the name, a pause. Each turns what was typed into JetStream's configuration (durations in
nanoseconds, -1 for no limit) and back, refuses what eventbus/admin.py would refuse before the
server is asked, and takes the server's refusals next to their fields (`add_errors`)."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from eventbus import admin

NS = admin.NS
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": NS // 1000, "s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]i?b?|b)?$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "pi": 1024**5,
}


def parse_duration(text: str) -> int:
    """'90s', '15m', '2h', '7d', '1h30m' or plain seconds -> nanoseconds ('' -> 0)."""
    text = text.strip().replace(" ", "")
    if not text or text == "0":
        return 0
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]
        pos = match.end()
    if pos != len(text):
        raise forms.ValidationError(
            "A duration such as 90s, 15m, 2h, 7d or 1h30m (empty: no limit)."
        )
    return int(total)


def format_duration(ns: int) -> str:
    if ns <= 0:
        return ""
    for unit in ("d", "h", "m", "s", "ms"):
        if ns % _DURATION_UNITS[unit] == 0:
            return f"{ns // _DURATION_UNITS[unit]}{unit}"
    return f"{ns / NS:g}s"


def parse_size(text: str) -> int:
    """'1048576', '10MB', '1.5 GiB' -> bytes ('' -> -1, no limit)."""
    text = text.strip()
    if not text:
        return -1
    if text.startswith("-"):
        raise forms.ValidationError("Cannot be negative: leave it empty for no limit.")
    match = _SIZE.match(text)
    if match is None:
        raise forms.ValidationError("A size such as 1048576, 512KiB, 10MB or 2GiB.")
    unit = (match.group(2) or "").lower().rstrip("b") if match.group(2) != "b" else "b"
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(size: int) -> str:
    if size < 0:
        return ""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class DurationField(forms.CharField):
    def __init__(self, **kwargs: Any):
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> int:  # type: ignore[override]
        if isinstance(value, int):
            return value
        return parse_duration(str(value or ""))

    def prepare_value(self, value: Any) -> Any:
        return format_duration(value) if isinstance(value, int) else value


class SizeField(forms.CharField):
    def __init__(self, **kwargs: Any):
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> int:  # type: ignore[override]
        if isinstance(value, int):
            return value
        return parse_size(str(value or ""))

    def prepare_value(self, value: Any) -> Any:
        return format_size(value) if isinstance(value, int) else value


class LimitField(forms.IntegerField):
    """A count; empty means no limit (-1)."""

    def __init__(self, **kwargs: Any):
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> int:  # type: ignore[override]
        number = super().to_python(value)
        if number is None:
            return -1
        if number < 0:
            raise forms.ValidationError("Cannot be negative: leave it empty for no limit.")
        return int(number)

    def prepare_value(self, value: Any) -> Any:
        return "" if isinstance(value, int) and value < 0 else value


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(v, v.replace("_", " ")) for v in values]


class ManageForm(forms.Form):
    """A form that takes eventbus.admin's field errors next to its own fields."""

    field_aliases: dict[str, str] = {}

    def add_errors(self, error: admin.AdminError) -> None:
        for field, message in error.errors:
            key = self.field_aliases.get(field or "", field)
            if key in self.fields and key not in self.disabled_names():
                self.add_error(key, message)
            else:
                self.add_error(None, message if not field else f"{field}: {message}")

    def disabled_names(self) -> set[str]:
        return {name for name, f in self.fields.items() if f.disabled}

    def check_limits(self, cleaned: dict[str, Any]) -> None:
        for key, value in list(cleaned.items()):
            if key in self.errors or not isinstance(value, int) or isinstance(value, bool):
                continue
            if key in (*admin.DURATIONS, *admin.MAX_LIMITS):
                problem = admin.number_problem(key, value)
                if problem:
                    self.add_error(key, problem)


class StreamForm(ManageForm):
    """A stream's configuration. With `editing`, what JetStream will not change is read-only."""

    name = forms.CharField(
        max_length=admin.MAX_NAME,
        required=False,
        help_text="Not allowed: spaces, dots, *, >, / or \\ (what NATS refuses); "
        "letters, digits, - and _ are safest for tools and URLs.",
    )
    subjects = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text="One per line; * and > as wildcards.",
    )
    retention = forms.ChoiceField(choices=_choices(admin.RETENTIONS), initial="limits")
    storage = forms.ChoiceField(choices=_choices(admin.STORAGES), initial="file")
    num_replicas = forms.IntegerField(label="Replicas", initial=1, min_value=1, max_value=5)
    max_age = DurationField(help_text="e.g. 7d, 12h; empty: kept for ever")
    max_bytes = SizeField(help_text="e.g. 10GiB; empty: no limit")
    max_msgs = LimitField(label="Max messages", help_text="empty: no limit")
    max_msg_size = SizeField(label="Max message size", help_text="e.g. 1MiB; empty: no limit")
    max_msgs_per_subject = LimitField(label="Max messages per subject", help_text="empty: no limit")
    discard = forms.ChoiceField(
        choices=_choices(admin.DISCARDS),
        initial="old",
        help_text="when full: drop the oldest, or refuse new ones",
    )
    duplicate_window = DurationField(help_text="e.g. 2m; empty: the server's default")
    allow_direct = forms.BooleanField(required=False, label="Allow direct get")
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=4096
    )

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.editing = editing
        if editing:
            for key in admin.STREAM_FIXED:
                self.fields[key].disabled = True
                self.fields[key].help_text = "JetStream does not change this."
            self.fields[
                "retention"
            ].help_text = "Limits ↔ interest can change; to or from work queue cannot."

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "").strip()
        if not self.editing and (problem := admin.name_problem(name)):
            raise forms.ValidationError(problem)
        return name

    def clean_subjects(self) -> list[str]:
        subjects = lines(str(self.cleaned_data.get("subjects") or ""))
        if problem := admin.subjects_problem(subjects):
            raise forms.ValidationError(problem)
        return subjects

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        self.check_limits(cleaned)
        return cleaned

    def to_config(self) -> dict[str, Any]:
        c = self.cleaned_data
        config = {
            key: c[key]
            for key in (
                "name",
                "subjects",
                "retention",
                "storage",
                "num_replicas",
                "max_age",
                "max_bytes",
                "max_msgs",
                "max_msg_size",
                "max_msgs_per_subject",
                "discard",
                "allow_direct",
                "description",
            )
        }
        if c["duplicate_window"]:
            config["duplicate_window"] = c["duplicate_window"]
        if not config["description"]:
            config.pop("description")
        return config

    def changes(self) -> dict[str, Any]:
        """For an edit: the configuration's keys this form edits (not name or storage)."""
        config = self.to_config()
        return {k: v for k, v in config.items() if k not in admin.STREAM_FIXED} | {
            "description": self.cleaned_data["description"]
        }

    @staticmethod
    def initial_from(config: dict[str, Any]) -> dict[str, Any]:
        initial = dict(config)
        initial["subjects"] = "\n".join(config.get("subjects") or [])
        return initial


class ConsumerForm(ManageForm):
    """A durable pull consumer. With `editing`, what JetStream will not change is read-only."""

    field_aliases = {"durable_name": "name"}

    name = forms.CharField(
        max_length=admin.MAX_NAME, required=False, help_text="No spaces, dots, * or >."
    )
    description = forms.CharField(required=False, max_length=4096)
    filter_subjects = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="One per line; empty: every subject",
    )
    deliver_policy = forms.ChoiceField(choices=_choices(admin.DELIVER_POLICIES), initial="all")
    opt_start_seq = forms.IntegerField(
        required=False,
        min_value=1,
        label="Start sequence",
        help_text="with deliver policy by start sequence",
    )
    ack_policy = forms.ChoiceField(choices=_choices(admin.ACK_POLICIES), initial="explicit")
    ack_wait = DurationField(help_text="e.g. 30s; empty: the server's default")
    max_deliver = LimitField(help_text="deliveries per message; empty: no limit")
    max_ack_pending = LimitField(help_text="empty: the server's default")
    replay_policy = forms.ChoiceField(choices=_choices(admin.REPLAY_POLICIES), initial="instant")

    def __init__(self, *args: Any, editing: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.editing = editing
        if editing:
            for key in ("name", "deliver_policy", "opt_start_seq", "ack_policy"):
                self.fields[key].disabled = True
                self.fields[key].help_text = "JetStream does not change this."

    def clean_name(self) -> str:
        name = str(self.cleaned_data.get("name") or "").strip()
        if not self.editing and (problem := admin.name_problem(name, "consumer")):
            raise forms.ValidationError(problem)
        return name

    def clean_filter_subjects(self) -> list[str]:
        subjects = lines(str(self.cleaned_data.get("filter_subjects") or ""))
        if problem := admin.subjects_problem(subjects, required=False):
            raise forms.ValidationError(problem)
        return subjects

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        self.check_limits(cleaned)
        if cleaned.get("deliver_policy") == "by_start_sequence" and not cleaned.get(
            "opt_start_seq"
        ):
            self.add_error("opt_start_seq", "Give the sequence to start from.")
        return cleaned

    def to_config(self) -> dict[str, Any]:
        c = self.cleaned_data
        config: dict[str, Any] = {
            "durable_name": c["name"],
            "deliver_policy": c["deliver_policy"],
            "ack_policy": c["ack_policy"],
            "replay_policy": c["replay_policy"],
            "max_deliver": c["max_deliver"],
        }
        if c["description"]:
            config["description"] = c["description"]
        if c["filter_subjects"]:
            config["filter_subjects"] = c["filter_subjects"]
        if c["deliver_policy"] == "by_start_sequence":
            config["opt_start_seq"] = c["opt_start_seq"]
        if c["ack_wait"]:
            config["ack_wait"] = c["ack_wait"]
        if c["max_ack_pending"] >= 0:
            config["max_ack_pending"] = c["max_ack_pending"]
        return config

    def changes(self) -> dict[str, Any]:
        c = self.cleaned_data
        changes: dict[str, Any] = {
            "description": c["description"],
            "replay_policy": c["replay_policy"],
            "max_deliver": c["max_deliver"],
            "filter_subjects": c["filter_subjects"] or None,
        }
        if c["ack_wait"]:
            changes["ack_wait"] = c["ack_wait"]
        if c["max_ack_pending"] >= 0:
            changes["max_ack_pending"] = c["max_ack_pending"]
        return changes

    @staticmethod
    def initial_from(config: dict[str, Any]) -> dict[str, Any]:
        initial = dict(config)
        initial["name"] = config.get("durable_name") or config.get("name", "")
        subjects = config.get("filter_subjects") or (
            [config["filter_subject"]] if config.get("filter_subject") else []
        )
        initial["filter_subjects"] = "\n".join(subjects)
        return initial


class ConfirmForm(ManageForm):
    """A deletion or purge goes ahead only once the name is typed."""

    confirm = forms.CharField(required=False, label="Type the name to confirm")

    def __init__(self, *args: Any, expected: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.expected = expected

    def clean_confirm(self) -> str:
        typed = str(self.cleaned_data.get("confirm") or "")
        if typed != self.expected:
            raise forms.ValidationError("Type the name exactly, to confirm.")
        return typed


PURGE_MODES = [
    ("all", "every message"),
    ("subject", "the messages of one subject"),
    ("keep", "all but the newest N"),
    ("seq", "every message before a sequence"),
]


class PurgeForm(ConfirmForm):
    mode = forms.ChoiceField(choices=PURGE_MODES, initial="all", widget=forms.RadioSelect)
    subject = forms.CharField(
        required=False,
        help_text="with “the messages of one subject”, or to narrow N / sequence to a subject",
    )
    keep = forms.IntegerField(required=False, min_value=0, label="Keep the newest N")
    seq = forms.IntegerField(required=False, min_value=1, label="Up to (not including) sequence")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        mode = cleaned.get("mode")
        for needed in ("subject", "keep", "seq"):
            if mode == needed and cleaned.get(needed) in (None, ""):
                self.add_error(needed, "Give this for the purge you chose.")
        return cleaned

    def purge_args(self) -> dict[str, Any]:
        c, mode = self.cleaned_data, self.cleaned_data["mode"]
        return {
            "subject": (c.get("subject") or None) if mode != "all" else None,
            "keep": c.get("keep") if mode == "keep" else None,
            "upto_seq": c.get("seq") if mode == "seq" else None,
        }


class MessageDeleteForm(ManageForm):
    seq = forms.IntegerField(min_value=1, label="Sequence")


class PauseForm(ManageForm):
    pause_for = DurationField(label="Pause for", help_text="e.g. 30m, 2h, 1d")

    def clean_pause_for(self) -> int:
        value = self.cleaned_data.get("pause_for") or 0
        if value <= 0:
            raise forms.ValidationError("How long to pause, such as 30m, 2h or 1d.")
        if value > 10 * 365 * 86400 * NS:
            raise forms.ValidationError("At most ten years.")
        return int(value)
