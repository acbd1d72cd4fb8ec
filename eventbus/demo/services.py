"""What each demo service does with an event. The saga, one order:

  orders.created ─▶ inventory ─▶ inventory.reserved ─▶ payments ─▶ payments.authorized
                          │                                  │            │
                          └▶ inventory.failed ─▶ orders      │            ▼
                                   orders.cancelled ◀────────┤   orders: orders.confirmed
                 inventory.released ◀─ inventory ◀─ payments.declined    + shipping.requests
                                                                          │
                              orders.shipped ◀─ shipping (carrier, circuit breaker)
  notifications: orders.confirmed / cancelled / shipped ─▶ notifications.email ─▶ mailer

Failures come with the order (`simulate`), chosen by the order generator at the failure rate, so
tests can ask for each kind: decline (compensated), transient (retried until it works), poison
(malformed, terminated), exhaust (retried until max deliveries), out-of-stock (cancelled).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from eventbus.demo.breaker import CircuitBreaker, CircuitOpen
from eventbus.demo.worker import Effect, Handler, Incoming, Retry

FAILURES = ("decline", "transient", "poison", "exhaust", "out-of-stock")
SKUS = ("book", "lamp", "mug", "chair", "kettle", "plant")
CUSTOMERS = ("ada", "grace", "linus", "margaret", "ken", "barbara")


def effect(order_id: str, subject: str, data: dict[str, Any], variant: str = "") -> Effect:
    """An event caused by this order, with an id derived from the order, the subject and (when
    one order causes several events on one subject) a variant: published twice, stored once
    (the stream's duplicate window)."""
    msg_id = f"{order_id}.{subject}" + (f".{variant}" if variant else "")
    return Effect(subject, {"order_id": order_id, **data}, msg_id)


def new_order(rng: random.Random, failure_rate: float, simulate: str | None = None) -> Effect:
    order_id = uuid.UUID(int=rng.getrandbits(128)).hex
    if simulate is None and rng.random() < failure_rate:
        simulate = rng.choice(FAILURES)
    quantities = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
    items = [{"sku": rng.choice(SKUS), "qty": q} for q in quantities]
    quantity = sum(quantities)
    order = {
        "order_id": order_id,
        "customer": rng.choice(CUSTOMERS),
        "items": items,
        "amount": round(quantity * rng.uniform(5, 40), 2),
        "simulate": simulate,
    }
    if simulate == "poison":  # what a buggy producer sends: cut-off JSON
        return Effect(
            "orders.created", json.dumps(order).encode()[:40], f"{order_id}.orders.created"
        )
    return Effect("orders.created", order, f"{order_id}.orders.created")


@dataclass
class World:
    """The services' own state: reservations, the carrier and its breaker, the mail sent."""

    rng: random.Random
    failure_rate: float
    retry_delay: float = 2.0
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    reservations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    emails: list[dict[str, Any]] = field(default_factory=list)
    carrier_calls: int = 0

    async def carrier(self, order_id: str) -> str:
        """The flaky downstream: a shipping carrier's API that fails now and then."""
        self.carrier_calls += 1
        await asyncio.sleep(0.01)
        if self.rng.random() < self.failure_rate / 2:
            raise ConnectionError("carrier API: 503 Service Unavailable")
        return f"TRK{order_id[:10].upper()}"

    # inventory
    async def reserve(self, msg: Incoming) -> list[Effect]:
        order = msg.json()
        oid = order["order_id"]
        if order.get("simulate") == "exhaust":
            raise Retry("warehouse system timed out", self.retry_delay / 4)
        if order.get("simulate") == "out-of-stock":
            return [effect(oid, "inventory.failed", {"reason": "out of stock"})]
        self.reservations[oid] = order["items"]
        reserved = {"items": order["items"], "amount": order["amount"],
                    "simulate": order.get("simulate")}  # fmt: skip
        return [effect(oid, "inventory.reserved", reserved)]

    async def release(self, msg: Incoming) -> list[Effect]:
        oid = msg.json()["order_id"]
        items = self.reservations.pop(oid, [])
        return [effect(oid, "inventory.released", {"items": items})]

    # payments
    async def charge(self, msg: Incoming) -> list[Effect]:
        event = msg.json()
        oid, simulate = event["order_id"], event.get("simulate")
        if simulate == "transient" and msg.num_delivered < 3:
            raise Retry("payment gateway timed out", self.retry_delay / 4)
        if simulate == "decline":
            return [effect(oid, "payments.declined", {"reason": "card declined"})]
        return [effect(oid, "payments.authorized", {"amount": event["amount"],
                                                    "payment_id": f"pay_{oid[:12]}"})]  # fmt: skip

    # orders
    async def on_inventory_failed(self, msg: Incoming) -> list[Effect]:
        event = msg.json()
        return [effect(event["order_id"], "orders.cancelled", {"reason": event["reason"]})]

    async def on_payment(self, msg: Incoming) -> list[Effect]:
        event = msg.json()
        oid = event["order_id"]
        if msg.subject == "payments.declined":
            return [effect(oid, "orders.cancelled", {"reason": event["reason"]})]
        return [
            effect(oid, "orders.confirmed", {"payment_id": event["payment_id"]}),
            effect(oid, "shipping.requests", {"amount": event["amount"]}),
        ]

    # shipping
    async def ship(self, msg: Incoming) -> list[Effect]:
        oid = msg.json()["order_id"]
        try:
            tracking = await self.breaker.call(lambda: self.carrier(oid))
        except CircuitOpen as exc:
            raise Retry(str(exc), max(exc.retry_in, 0.5)) from exc
        except ConnectionError as exc:
            raise Retry(str(exc), self.retry_delay / 2) from exc
        return [effect(oid, "orders.shipped", {"tracking": tracking})]

    # notifications
    async def notify(self, msg: Incoming) -> list[Effect]:
        event = msg.json()
        kind = msg.subject.rsplit(".", 1)[-1]
        template = f"order-{kind}"  # one mail per kind of news: each its own message id
        return [effect(event["order_id"], "notifications.email", {"template": template}, kind)]

    async def send_mail(self, msg: Incoming) -> list[Effect]:
        self.emails.append(msg.json())
        return []

    def handlers(self) -> dict[str, Handler]:
        """Handler by durable consumer name (topology.CONSUMERS)."""
        return {
            "inventory": self.reserve,
            "inventory-compensation": self.release,
            "payments": self.charge,
            "orders-inventory": self.on_inventory_failed,
            "orders-payments": self.on_payment,
            "shipping": self.ship,
            "notifications": self.notify,
            "mailer": self.send_mail,
        }
