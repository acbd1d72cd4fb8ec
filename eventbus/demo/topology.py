"""The demo's streams and durable consumers, created or updated idempotently.

A namespace prefixes every stream, subject and bucket, so tests run side by side on one server:
namespace "t1" gives stream T1_ORDERS on subjects t1.orders.>; the default gives ORDERS, orders.>.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StreamConfig,
)
from nats.js.errors import BadRequestError

log = logging.getLogger("flowscope.demo")


@dataclass(frozen=True)
class Names:
    namespace: str = ""

    def stream(self, name: str) -> str:
        return f"{self.namespace.upper()}_{name}" if self.namespace else name

    def subject(self, subject: str) -> str:
        return f"{self.namespace}.{subject}" if self.namespace else subject

    def local(self, subject: str) -> str:
        """A full subject without the namespace: 't1.orders.created' -> 'orders.created'."""
        prefix = f"{self.namespace}." if self.namespace else ""
        return subject[len(prefix) :] if prefix and subject.startswith(prefix) else subject

    @property
    def bucket(self) -> str:
        return self.stream("DEMO_PROCESSED")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    retention: RetentionPolicy


@dataclass(frozen=True)
class ConsumerSpec:
    service: str
    stream: str
    durable: str
    filters: list[str] = field(default_factory=list)


STREAMS = [
    StreamSpec("ORDERS", ["orders.>"], RetentionPolicy.LIMITS),
    StreamSpec("INVENTORY", ["inventory.>"], RetentionPolicy.INTEREST),
    StreamSpec("PAYMENTS", ["payments.>"], RetentionPolicy.INTEREST),
    StreamSpec("SHIPPING", ["shipping.>"], RetentionPolicy.WORK_QUEUE),
    StreamSpec("NOTIFICATIONS", ["notifications.>"], RetentionPolicy.WORK_QUEUE),
]

CONSUMERS = [
    ConsumerSpec("inventory", "ORDERS", "inventory", ["orders.created"]),
    ConsumerSpec("inventory", "PAYMENTS", "inventory-compensation", ["payments.declined"]),
    ConsumerSpec("payments", "INVENTORY", "payments", ["inventory.reserved"]),
    ConsumerSpec("orders", "INVENTORY", "orders-inventory", ["inventory.failed"]),
    ConsumerSpec(
        "orders", "PAYMENTS", "orders-payments", ["payments.authorized", "payments.declined"]
    ),
    ConsumerSpec("shipping", "SHIPPING", "shipping", ["shipping.requests"]),
    ConsumerSpec(
        "notifications",
        "ORDERS",
        "notifications",
        ["orders.confirmed", "orders.cancelled", "orders.shipped"],
    ),
    ConsumerSpec("notifications", "NOTIFICATIONS", "mailer", ["notifications.email"]),
]


@dataclass(frozen=True)
class Settings:
    max_deliver: int = 4
    ack_wait: float = 30.0
    max_age: float = 7 * 86400.0  # the limits stream keeps a week
    duplicate_window: float = 120.0


async def ensure(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create each stream and consumer, or bring an existing one to this configuration."""
    for spec in STREAMS:
        config = StreamConfig(
            name=names.stream(spec.name),
            subjects=[names.subject(s) for s in spec.subjects],
            retention=spec.retention,
            max_age=settings.max_age if spec.retention == RetentionPolicy.LIMITS else None,
            duplicate_window=settings.duplicate_window,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with another configuration
            await js.update_stream(config)
    for c in CONSUMERS:
        filters = [names.subject(f) for f in c.filters]
        await js.add_consumer(
            names.stream(c.stream),
            ConsumerConfig(
                name=c.durable,
                durable_name=c.durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=settings.ack_wait,
                max_deliver=settings.max_deliver,
                max_ack_pending=1000,
                filter_subject=filters[0] if len(filters) == 1 else None,
                filter_subjects=filters if len(filters) > 1 else None,
            ),
        )
    log.info(
        "demo streams and consumers ready (%d streams, %d consumers)", len(STREAMS), len(CONSUMERS)
    )
