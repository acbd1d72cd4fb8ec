"""Demo services under load (issue #5's load knob): `make bench` or `python bench/demo_saga.py`.

Starts its own nats-server in a temporary directory. In the same run it measures
(a) a baseline: how fast one nats-py publisher and one pull consumer (fetch, ack each) move
    events through a JetStream stream on this machine, and
(b) the demo services (eventbus.demo, every pattern on: idempotency records, trace spans,
    bounded concurrency, acks waited for) at increasing `FLOWSCOPE_DEMO_RATE` order rates, no
    failures: orders completed per second against the rate asked for, the saga's events per
    second against (a), and the time from an order's `orders.created` to its `orders.shipped`.
It prints ratios, not verdicts, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import nats.errors  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from eventbus.demo.run import Demo, DemoConfig  # noqa: E402
from eventbus.embedded import EmbeddedNats  # noqa: E402

WIDTHS = (11, 9, 9, 10, 9, 7, 7, 7, 10)


async def baseline(url: str, n: int) -> float:
    """Events/s through one stream: one publisher (acks pipelined), one consumer acking each."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BASE", subjects=["base.>"])
    await js.add_consumer("BASE", durable_name="c", ack_policy="explicit", max_ack_pending=10_000)
    sub = await js.pull_subscribe_bind("c", "BASE")
    got = 0

    async def consume() -> None:
        nonlocal got
        while got < n:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)

    t0 = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(n):
        await js.publish_async(f"base.{i % 8}", b'{"order_id":"x","amount":1}')
    await js.publish_async_completed()
    await consumer
    rate = n / (time.perf_counter() - t0)
    await nc.close()
    return rate


async def saga_run(url: str, rate: float, seconds: float, namespace: str) -> dict[str, float]:
    created: dict[str, float] = {}
    shipped: dict[str, float] = {}
    events = 0
    tap = await nats.connect(url)

    async def on(msg: Msg) -> None:
        nonlocal events
        events += 1
        subject = msg.subject.split(".", 1)[1]
        if subject in ("orders.created", "orders.shipped"):
            oid = json.loads(msg.data)["order_id"]
            (created if subject == "orders.created" else shipped)[oid] = time.perf_counter()

    await tap.subscribe(f"{namespace}.>", cb=on)
    demo = Demo(DemoConfig(url, rate=rate, failure_rate=0.0, namespace=namespace, seed=1))
    await demo.start()
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    for task in demo.tasks:  # no more orders; the services go on with those placed
        if task.get_name() == "orders":
            task.cancel()
    placed = set(created)
    deadline = time.perf_counter() + 30  # let the last orders finish
    while not placed <= set(shipped) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - t0
    await demo.stop()
    await tap.close()
    latencies = sorted(shipped[o] - created[o] for o in shipped if o in created)
    return {
        "placed": float(len(placed)),
        "shipped": float(len(placed & set(shipped))),
        "orders_per_s": len(shipped) / elapsed,
        "events_per_s": events / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "seconds": seconds,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="flowscope-demo-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats").start()
        try:
            base = await baseline(server.url, args.baseline_events)
            print("\nFlowscope demo saga benchmark (one process, no failures)")
            print(f"(a) baseline: publish + pull consumer acking each: {base:,.0f} events/s\n")
            head = ("rate asked", "placed/s", "of asked", "shipped/s", "events/s", "vs (a)",
                    "p50 ms", "p99 ms", "shipped")  # fmt: skip
            print(" ".join(f"{h:>{w}}" for h, w in zip(head, WIDTHS, strict=True)))
            for i, rate in enumerate(args.rates):
                r = await saga_run(server.url, rate, args.seconds, f"bench{i}")
                placed_rate = r["placed"] / r["seconds"]
                print(
                    f"{rate:>11,.0f} {placed_rate:>9,.1f} {placed_rate / rate:>9.2f}"
                    f" {r['orders_per_s']:>10,.1f}"
                    f" {r['events_per_s']:>9,.0f} {r['events_per_s'] / base:>7.2f}"
                    f" {r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f}"
                    f" {int(r['shipped']):>4}/{int(r['placed']):<4}"
                )
            print(
                "\nplaced/s: orders the generator placed in the window (of asked: / the rate "
                "asked); shipped/s: those orders shipped, over the window and the time they took "
                "to finish; events/s: every event the saga published; p50/p99: orders.created -> "
                "orders.shipped. Every order placed is shipped, or the shipped column says not."
            )
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 50, 200, 500])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per rate (10)")
    parser.add_argument("--baseline-events", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="rates 10 and 100, 3 s each")
    ns = parser.parse_args()
    if ns.quick:
        ns.rates, ns.seconds, ns.baseline_events = [10, 100], 3.0, 10_000
    asyncio.run(main(ns))
