"""Flowscope's schema. Django owns it; the tap (eventbus/, plain psycopg) writes these tables.

Table names are fixed (`db_table`) because the tap writes them with hand-written SQL and COPY.
"""

from __future__ import annotations

from django.db import models


class Retention(models.TextChoices):
    LIMITS = "limits"
    INTEREST = "interest"
    WORKQUEUE = "workqueue"


class ObservedBy(models.TextChoices):
    CONSUMER = "consumer", "ephemeral ack-none consumer"
    REPUBLISH = "republish", "stream RePublish"
    SUBJECT = "subject", "subject subscription"
    NONE = "none", "not observed"


class StreamState(models.Model):
    """A stream's state as the server reports it (STREAM.INFO), sampled by the lag sampler."""

    messages = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    first_seq = models.BigIntegerField(default=0)
    last_seq = models.BigIntegerField(default=0)
    consumer_count = models.IntegerField(default=0)

    class Meta:
        abstract = True


class ConsumerCounters(models.Model):
    """A consumer's progress as the server reports it (CONSUMER.INFO)."""

    num_pending = models.BigIntegerField(default=0)
    num_ack_pending = models.BigIntegerField(default=0)
    num_redelivered = models.BigIntegerField(default=0)
    num_waiting = models.BigIntegerField(default=0)
    delivered_stream_seq = models.BigIntegerField(default=0)
    ack_floor_stream_seq = models.BigIntegerField(default=0)
    # the ack floor in deliveries (consumer sequence): what the ack rate is the rise of, since
    # a filtered consumer's stream sequence also passes other subjects' messages. NULL: sampled
    # before it was recorded
    ack_floor_consumer_seq = models.BigIntegerField(null=True, blank=True)

    class Meta:
        abstract = True


class Stream(StreamState):
    """One incarnation of a JetStream stream: deleted and created again, it is a new row,
    because its sequence numbers start again at 1."""

    name = models.CharField(max_length=255)
    created = models.DateTimeField(help_text="the server's creation time of this incarnation")
    retention = models.CharField(max_length=16, choices=Retention.choices)
    subjects = models.JSONField(default=list)
    config = models.JSONField(default=dict)
    observed_by = models.CharField(max_length=16, choices=ObservedBy.choices, default="none")
    observation_note = models.TextField(blank=True, default="")
    discovered_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    state_at = models.DateTimeField(
        null=True, blank=True, help_text="when the server last reported the stream's state"
    )

    class Meta:
        db_table = "flowscope_stream"
        constraints = [
            models.UniqueConstraint(fields=["name", "created"], name="stream_incarnation_unique")
        ]

    def __str__(self) -> str:
        return self.name


class Checkpoint(models.Model):
    """The last stream sequence written for a stream; committed in the same transaction as
    the events it covers, so a restart resumes at last_seq + 1."""

    stream = models.OneToOneField(Stream, on_delete=models.CASCADE, primary_key=True)
    last_seq = models.BigIntegerField(default=0)
    recorded = models.BigIntegerField(default=0, help_text="events written for this stream")
    dropped = models.BigIntegerField(
        default=0,
        db_default=0,
        help_text="messages a subject subscription dropped (the tap fell behind)",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "flowscope_checkpoint"


class Event(models.Model):
    """One message as stored in a stream. The table is partitioned by day on `ts` (see the
    migration); Django sees `id` as the key, the database keys on (id, ts)."""

    id = models.BigAutoField(primary_key=True)
    stream = models.ForeignKey(Stream, on_delete=models.DO_NOTHING, db_constraint=False)
    seq = models.BigIntegerField(null=True)  # stream sequence; null when the observer lacks it
    ts = models.DateTimeField()  # the stream's timestamp (receipt time when unknown)
    subject = models.TextField()
    size = models.IntegerField()
    headers = models.JSONField(null=True)
    msg_id = models.TextField(null=True)
    trace_id = models.CharField(max_length=32, null=True)
    span_id = models.CharField(max_length=16, null=True)
    service = models.TextField(null=True)
    payload = models.BinaryField()
    truncated = models.BooleanField(default=False)
    recorded_at = models.DateTimeField()

    class Meta:
        db_table = "flowscope_event"
        managed = True


class Gap(models.Model):
    """Stream sequences the tap could not record: they left the stream before it read them."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="gaps")
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField()
    detected_at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField()

    class Meta:
        db_table = "flowscope_gap"
        constraints = [
            models.UniqueConstraint(fields=["stream", "first_seq"], name="gap_unique_start")
        ]

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


class Consumer(ConsumerCounters):
    """An application's consumer, as last seen; the lag history is in ConsumerSample."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="consumers")
    name = models.CharField(max_length=255)
    config = models.JSONField(default=dict)
    created = models.DateTimeField(null=True)
    last_seen = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "flowscope_consumer"
        constraints = [
            models.UniqueConstraint(fields=["stream", "name"], name="consumer_unique_name")
        ]

    @property
    def lag(self) -> int:
        return self.num_pending + self.num_ack_pending


class ConsumerSample(ConsumerCounters):
    ts = models.DateTimeField(db_index=True)
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE)
    consumer = models.CharField(max_length=255)
    downsampled = models.BooleanField(default=False)

    class Meta:
        db_table = "flowscope_consumer_sample"
        indexes = [models.Index(fields=["stream", "consumer", "ts"], name="consumer_sample_series")]


class StreamSample(StreamState):
    ts = models.DateTimeField(db_index=True)
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE)
    downsampled = models.BooleanField(default=False)

    class Meta:
        db_table = "flowscope_stream_sample"
        indexes = [models.Index(fields=["stream", "ts"], name="stream_sample_series")]


class TapInstance(models.Model):
    """A running tap process: taps split streams between the live ones (see eventbus/lease.py)."""

    id = models.CharField(max_length=64, primary_key=True)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    streams = models.JSONField(default=list)
    last_commit_at = models.DateTimeField(null=True, blank=True)
    # The tap writes these rows with SQL of its own: every column has a database default.
    held_events = models.BigIntegerField(
        default=0, db_default=0, help_text="events taken from NATS and not committed yet"
    )
    written = models.BigIntegerField(
        default=0, db_default=0, help_text="events written since it started"
    )
    events_per_second = models.FloatField(default=0.0, db_default=0.0)
    writer_state = models.CharField(max_length=16, default="starting", db_default="starting")
    restarts = models.IntegerField(default=0, db_default=0, help_text="supervised task restarts")
    last_error = models.TextField(blank=True, default="", db_default="")

    class Meta:
        db_table = "flowscope_tap"


class EndpointKind(models.TextChoices):
    SERVICE = "service", "NATS micro service"
    CONNECTION = "connection", "client connection"


class Endpoint(models.Model):
    """Who NATS itself says is there, found by the tap's topology discovery
    (eventbus/topology.py): micro services (`$SRV.INFO`/`STATS`: their endpoints' subjects) and
    named client connections (`$SYS.REQ.ACCOUNT.PING.CONNZ`: their subscriptions). One row per
    (kind, name), all instances merged; rows not seen for a while are stale, not deleted at once."""

    kind = models.CharField(max_length=16, choices=EndpointKind.choices)
    name = models.CharField(max_length=255)
    subjects = models.JSONField(default=list)
    detail = models.JSONField(default=dict)
    last_seen = models.DateTimeField()

    class Meta:
        db_table = "flowscope_endpoint"
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="endpoint_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class DiscoveryProbe(models.Model):
    """How the last discovery round went per source (`srv`, `connz`): the topology page says
    when a source is refused or unanswered instead of showing an empty graph as the truth."""

    source = models.CharField(max_length=16, primary_key=True)
    ok = models.BooleanField(default=False)
    note = models.TextField(blank=True, default="")
    checked_at = models.DateTimeField()

    class Meta:
        db_table = "flowscope_discovery_probe"


class AuditEntry(models.Model):
    """One change someone made or tried (dashboard/audit.py writes them): who, from where,
    what, and how it ended. Written whether the change succeeded or failed."""

    class Result(models.TextChoices):
        OK = "ok", "ok"
        FAILED = "failed", "failed (the server's error)"
        REFUSED = "refused", "refused (not allowed)"

    ts = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True, default="")  # kept if the user goes
    address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)  # "stream.create", "login.failed"
    target = models.CharField(max_length=512, blank=True, default="")  # "stream ORDERS"
    detail = models.JSONField(default=dict, blank=True)  # before/after, parameters
    result = models.CharField(max_length=16, choices=Result.choices, default=Result.OK)
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "flowscope_audit"
        ordering = ["-ts", "-id"]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action} {self.target}"


class ApiToken(models.Model):
    """A user's API token for `Authorization: Bearer <token>`: shown once when created, stored
    only as its SHA-256 (a token is 32 random bytes: no slow hash is needed against guessing)."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="the token's first characters, to tell it")
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "flowscope_api_token"
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class DeadLetter(models.Model):
    """A message a consumer gave up on (eventbus/deadletters.py captures them): from the
    server's max-deliveries or terminated advisory, or a message of a dead-letter stream
    (FLOWSCOPE_DLQ_STREAMS). Once per death, whatever taps run or restart: (stream, seq,
    consumer) within one life of the stream and the consumer (eventbus/deadletters.py `insert`;
    the unique key adds the advisory's time, so a recreated stream's seq dying again is kept)."""

    class Reason(models.TextChoices):
        MAX_DELIVERIES = "max_deliveries", "delivered the maximum number of times"
        TERMINATED = "terminated", "terminated by the consumer"
        DLQ_STREAM = "dlq_stream", "in a dead-letter stream"

    class PayloadSource(models.TextChoices):
        STREAM = "stream", "read from the stream"
        RECORDED = "recorded", "the tap's stored copy"
        GONE = "gone", "gone: neither the stream nor the tap holds it"

    class Status(models.TextChoices):
        NEW = "new"
        REPLAYED = "replayed"
        DISCARDED = "discarded"

    # The incarnation the message belonged to; null while the tap has not seen the stream.
    stream = models.ForeignKey(
        Stream, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters"
    )
    stream_name = models.CharField(max_length=255)
    seq = models.BigIntegerField()
    consumer = models.CharField(max_length=255, blank=True, default="")  # "" for a DLQ stream
    reason = models.CharField(max_length=16, choices=Reason.choices)
    terminate_reason = models.TextField(blank=True, default="")
    deliveries = models.IntegerField(default=0)
    subject = models.TextField(blank=True, default="")
    headers = models.JSONField(null=True, blank=True)
    payload = models.BinaryField(default=bytes)
    truncated = models.BooleanField(default=False)  # the tap's preview, not the whole payload
    payload_source = models.CharField(max_length=16, choices=PayloadSource.choices)
    # A message of a dead-letter stream whose headers name where it came from (Nats-Stream,
    # Nats-Sequence of a republished copy).
    origin_stream = models.CharField(max_length=255, blank=True, default="")
    origin_seq = models.BigIntegerField(null=True, blank=True)
    died_at = models.DateTimeField()
    captured_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    status_note = models.TextField(blank=True, default="")

    class Meta:
        db_table = "flowscope_deadletter"
        constraints = [
            # a stream created again (its sequences start at 1 again) or a consumer of the same
            # name created again may let the same seq die once more: another row
            models.UniqueConstraint(
                fields=["stream_name", "seq", "consumer", "died_at"], name="deadletter_unique"
            )
        ]
        indexes = [
            models.Index(fields=["status", "-died_at"], name="deadletter_status_died"),
            models.Index(
                fields=["stream_name", "consumer", "-died_at"], name="deadletter_stream_consumer"
            ),
            # The new ones waiting, counted per (stream, consumer) on the overview, the
            # topology and the stream pages: an index-only scan of the new rows alone.
            models.Index(
                fields=["stream_name", "consumer"],
                name="deadletter_waiting",
                condition=models.Q(status="new"),
            ),
            # The newest of all (the list unfiltered, and the statuses its live pushes carry).
            models.Index(fields=["-died_at", "-id"], name="deadletter_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.stream_name}:{self.seq} ({self.consumer or self.reason})"


class ReplayJob(models.Model):
    """A replay of dead letters (issue #15): one, a selection, or all that matched a filter.

    Its items are fixed when it is created. A worker (eventbus/replay.py, a supervised task of
    every tap) claims it with FOR UPDATE SKIP LOCKED and a lease it renews while it publishes;
    a worker that dies lets the lease run out and another one resumes the job from the items
    not yet acknowledged (each published with the same Nats-Msg-Id, so the stream's duplicate
    window drops a copy the dead worker had sent but not recorded)."""

    class Mode(models.TextChoices):
        COPY = "copy", "copy (the original stays where it is)"
        MOVE = "move", "move (the original leaves its stream once the copy is stored)"

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"  # every item ended, published or failed: see the counts
        CANCELLED = "cancelled"

    created_at = models.DateTimeField()
    user = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True, default="")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.COPY)
    subject = models.TextField(blank=True, default="")  # "" = each one's original subject
    rate = models.FloatField(null=True, blank=True)  # messages a second; None = unthrottled
    selection = models.JSONField(default=dict, blank=True)  # {"ids": [...]} or {"filter": {...}}
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    total = models.IntegerField(default=0)
    published = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    resumed = models.IntegerField(default=0)  # times another worker took it over

    class Meta:
        db_table = "flowscope_replayjob"
        indexes = [models.Index(fields=["state", "id"], name="replayjob_state")]

    def __str__(self) -> str:
        return f"replay job {self.id} ({self.state}, {self.published}/{self.total})"

    @property
    def ended(self) -> int:
        return self.published + self.failed


class ReplayItem(models.Model):
    """One dead letter of a replay job, and how its publish ended."""

    class State(models.TextChoices):
        PENDING = "pending"
        PUBLISHED = "published"
        FAILED = "failed"
        CANCELLED = "cancelled"

    job = models.ForeignKey(ReplayJob, on_delete=models.CASCADE, related_name="items")
    position = models.IntegerField()
    dead_letter = models.ForeignKey(DeadLetter, on_delete=models.CASCADE, related_name="replays")
    attempt = models.IntegerField()  # part of the Nats-Msg-Id: a deliberate replay again is +1
    msg_id = models.CharField(max_length=128)
    subject = models.TextField(blank=True, default="")  # where it went (or was to go)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    result_stream = models.CharField(max_length=255, blank=True, default="")
    result_seq = models.BigIntegerField(null=True, blank=True)
    duplicate = models.BooleanField(default=False)  # the server had it already (a retry)
    deleted_original = models.BooleanField(null=True, blank=True)  # move mode
    error = models.TextField(blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "flowscope_replayitem"
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="replayitem_position"),
        ]
        # No index holds `state` or a result column, and the table is created with
        # fillfactor 50 (migration 0014): recording a result is a HOT update, which touches no
        # index (a bulk replay records thousands a second). Pending items are found by position.


class Nak(models.Model):
    """One nak the server reported (its MSG_NAKED advisory, eventbus/deadletters.py): delivery
    number `deliveries` of message `seq` of `stream_name` was refused by `consumer` at `ts` (the
    advisory's time). Shown on the dead letter's page, before its final event. Once per
    (stream, seq, consumer, deliveries, ts), however often the advisory comes (a redelivered
    advisory repeats its time; the same delivery of the same seq in a stream or consumer created
    again does not); rows older than the tap's retention (FLOWSCOPE_RETENTION) are deleted by
    its retention loop. The page shows the naks of the dead letter's life only
    (dashboard/deadletters.py `naks`)."""

    stream_name = models.CharField(max_length=255)
    seq = models.BigIntegerField()
    consumer = models.CharField(max_length=255)
    deliveries = models.IntegerField()
    ts = models.DateTimeField()

    class Meta:
        db_table = "flowscope_nak"
        constraints = [
            # Also the index a dead letter's naks are read by (stream, seq, consumer).
            models.UniqueConstraint(
                fields=["stream_name", "seq", "consumer", "deliveries", "ts"], name="nak_unique"
            )
        ]
        indexes = [models.Index(fields=["ts"], name="nak_ts")]  # the retention's DELETE

    def __str__(self) -> str:
        return f"{self.stream_name}:{self.seq} nak {self.deliveries} ({self.consumer})"
