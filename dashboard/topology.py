"""The topology graph: publishers -> subjects -> streams -> consumers -> consuming services.

Built from what is stored, in a handful of queries whose size is bounded by the grouping, not by
the event count:
- publishers: the events' `service` column (the service header) over the last WINDOW, counted
  per (stream, subject, service): rates per edge are counts / WINDOW;
- subjects: those events' subjects, grouped by leading tokens (topology_grouping.py);
- streams and consumers: flowscope_stream and flowscope_consumer (filters tell which subjects
  feed a consumer; the stream -> consumer rate is the rate of the subjects its filters match);
- consuming services: micro services and client connections found by the tap
  (flowscope_endpoint, eventbus/topology.py); a push consumer belongs to the connection that
  subscribes to its deliver subject; the demo's durable consumers to their demo service
  (eventbus/demo/topology.py); any other consumer stands alone.
Health: "warn" for a consumer whose lag is higher than a minute ago or a stream at 80% of a
limit; "dead" (dead letters waiting, which outranks "warn") for a consumer with new dead letters
and a stream with any (its consumers', or a dead-letter stream's own), counted in one grouped
query (dashboard/deadletters.py waiting_counts).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from django.db import connection
from django.utils import timezone

from dashboard.deadletters import per_stream, waiting_counts
from dashboard.models import Consumer, DiscoveryProbe, Endpoint, Stream
from dashboard.topology_grouping import group_subjects, patterns_overlap, subject_matches
from eventbus.demo.topology import CONSUMERS as DEMO_CONSUMERS

WINDOW = timedelta(minutes=5)  # events counted for publishers and rates
TREND = timedelta(minutes=1)  # lag now against lag this long ago
ENDPOINT_FRESH = timedelta(minutes=2)  # discovery runs every 15 s: older rows are stale
NEAR_LIMIT = 0.8
MAX_EVENT_ROWS = 20_000  # distinct (stream, subject, service) rows read per window
NO_SERVICE = "(no service header)"
KIND_ORDER = {"publisher": 0, "subject": 1, "stream": 2, "consumer": 3, "service": 4}
KIND_TITLES = {
    "publisher": "Publishers",
    "subject": "Subjects",
    "stream": "Streams",
    "consumer": "Consumers",
    "service": "Consuming services",
}


@dataclass
class Node:
    id: str
    kind: str
    label: str
    detail: str = ""
    url: str = ""
    health: str = "ok"  # "ok" | "warn" | "dead" (dead letters waiting)
    health_text: str = ""
    dead_letters: int = 0  # new ones waiting (consumers and streams)
    dead_letters_url: str = ""  # the list of them


@dataclass
class Edge:
    source: str
    target: str
    rate: float | None = None  # messages/s; None where no rate is known
    note: str = ""  # "serves", "subscribes", ... where no rate is known

    @property
    def id(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def label(self) -> str:
        if self.rate is not None and self.rate > 0:
            return format_rate(self.rate)
        return self.note


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[str, Edge] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    window_seconds: int = int(WINDOW.total_seconds())

    def node(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def edge(self, source: str, target: str, rate: float | None = None, note: str = "") -> None:
        e = self.edges.get(f"{source}->{target}")
        if e is None:
            self.edges[f"{source}->{target}"] = Edge(source, target, rate, note)
        elif rate is not None:
            e.rate = (e.rate or 0.0) + rate

    def elements(self) -> dict[str, list[dict[str, Any]]]:
        """Cytoscape's element JSON (what topology.js reads from #topology-data)."""
        return {
            "nodes": [{"data": asdict(n)} for n in self.sorted_nodes()],
            "edges": [
                {"data": {"id": e.id, "source": e.source, "target": e.target, "label": e.label}}
                for e in sorted(self.edges.values(), key=lambda e: e.id)
            ],
        }

    def sorted_nodes(self) -> list[Node]:
        return sorted(self.nodes.values(), key=lambda n: (KIND_ORDER[n.kind], n.label.lower()))

    def sections(self) -> list[dict[str, Any]]:
        """The plain list: per kind its nodes, each with its edges in and out as text."""
        out_edges: dict[str, list[Edge]] = defaultdict(list)
        in_edges: dict[str, list[Edge]] = defaultdict(list)
        for e in self.edges.values():
            out_edges[e.source].append(e)
            in_edges[e.target].append(e)
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for n in self.sorted_nodes():
            by_kind[n.kind].append(
                {
                    "node": n,
                    "out": [
                        (self.nodes[e.target], e)
                        for e in sorted(out_edges[n.id], key=lambda e: e.id)
                    ],
                    "in": [
                        (self.nodes[e.source], e)
                        for e in sorted(in_edges[n.id], key=lambda e: e.id)
                    ],
                }
            )
        return [
            {"kind": k, "title": KIND_TITLES[k], "rows": by_kind[k]}
            for k in KIND_ORDER
            if by_kind[k]
        ]


def format_rate(rate: float | None) -> str:
    """Messages per second for a label: '12/s', '1.5/s', '0.03/s'."""
    if rate is None:
        return ""
    if rate >= 10:
        return f"{rate:,.0f}/s"
    if rate >= 1:
        return f"{rate:.1f}/s"
    return f"{rate:.2g}/s"


def near_limits(stream: Stream) -> str:
    """'' or why the stream is near its limits: messages or bytes at NEAR_LIMIT of the max."""
    reasons = []
    for used, key, what in (
        (stream.messages, "max_msgs", "messages"),
        (stream.bytes, "max_bytes", "bytes"),
    ):
        limit = (stream.config or {}).get(key) or -1
        if isinstance(limit, int) and limit > 0 and used >= NEAR_LIMIT * limit:
            reasons.append(f"{what} at {100 * used / limit:.0f}% of {key}")
    return "; ".join(reasons)


def dead_letters_waiting() -> dict[tuple[str, str], int]:
    """(stream, consumer) -> new dead letters waiting ("" as the consumer: a DLQ stream's)."""
    return waiting_counts()


def dead_letters_text(n: int) -> str:
    return f"{n:,} dead letter{'s' if n != 1 else ''} waiting"


def dead_letters_url(stream: str, consumer: str | None = None) -> str:
    query = {"stream": stream} | ({"consumer": consumer} if consumer is not None else {})
    return "/dead-letters/?" + urlencode({**query, "status": "new"})


def demo_service(stream: str, consumer: str) -> str | None:
    """The demo service a durable consumer belongs to, by the demo's naming (its streams may
    carry a namespace prefix: T1_ORDERS)."""
    for spec in DEMO_CONSUMERS:
        if consumer == spec.durable and (
            stream == spec.stream or stream.endswith("_" + spec.stream)
        ):
            return spec.service
    return None


def _event_counts(since: datetime) -> list[tuple[int, str, str | None, int]]:
    """(stream_id, subject, service, count) over the window: the BRIN on ts finds the window's
    pages; the aggregate is bounded by the distinct subjects, not by the events."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT stream_id, subject, service, count(*) FROM flowscope_event WHERE ts >= %s "
            "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT %s",
            [since, MAX_EVENT_ROWS],
        )
        return list(cur.fetchall())


def _lag_before(at: datetime) -> dict[tuple[int, str], int]:
    """Each consumer's lag at the latest sample no newer than `at` (within 5 minutes)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT ON (stream_id, consumer) stream_id, consumer, "
            "num_pending + num_ack_pending FROM flowscope_consumer_sample "
            "WHERE ts <= %s AND ts > %s ORDER BY stream_id, consumer, ts DESC",
            [at, at - timedelta(minutes=5)],
        )
        return {(sid, name): lag for sid, name, lag in cur.fetchall()}


def _filters(config: dict[str, Any]) -> list[str]:
    filters = list(config.get("filter_subjects") or [])
    if config.get("filter_subject"):
        filters.append(config["filter_subject"])
    return [f for f in filters if isinstance(f, str)]


def build_graph(now: datetime | None = None) -> Graph:
    now = now or timezone.now()
    g = Graph()
    seconds = WINDOW.total_seconds()
    streams = {
        s.id: s
        for s in Stream.objects.filter(deleted_at__isnull=True)
        .exclude(name__startswith="KV_")
        .exclude(name__startswith="OBJ_")
    }
    counts = [r for r in _event_counts(now - WINDOW) if r[0] in streams]
    if len(counts) >= MAX_EVENT_ROWS:
        g.notes.append(f"Only the {MAX_EVENT_ROWS:,} busiest subjects and publishers are shown.")
    endpoints = list(Endpoint.objects.filter(last_seen__gte=now - ENDPOINT_FRESH))
    subs = {(e.kind, e.name): [s for s in e.subjects if isinstance(s, str)] for e in endpoints}

    # Subjects: the window's traffic, plus each idle stream's own subjects.
    busy = {sid for sid, *_ in counts}
    idle_subjects = {
        sid: [str(x) for x in s.subjects or []] for sid, s in streams.items() if sid not in busy
    }
    all_subjects = {subject for _, subject, _, _ in counts}
    all_subjects.update(x for xs in idle_subjects.values() for x in xs)
    groups = group_subjects(all_subjects)
    members: dict[str, set[str]] = defaultdict(set)
    for subject, pattern in groups.items():
        members[pattern].add(subject)

    def subject_node(pattern: str) -> str:
        n = len(members[pattern])
        return g.node(
            Node(
                id=f"subject:{pattern}",
                kind="subject",
                label=pattern,
                detail=f"{n} subject{'s' if n != 1 else ''}" if n else "",
                url="/events/?" + urlencode({"subject": pattern}),
            )
        ).id

    dead = dead_letters_waiting()
    dead_per_stream = per_stream(dead)
    for s in streams.values():
        near = near_limits(s)
        waiting = dead_per_stream.get(s.name, 0)
        problems = [p for p in (dead_letters_text(waiting) if waiting else "", near) if p]
        g.node(
            Node(
                id=f"stream:{s.name}",
                kind="stream",
                label=s.name,
                url=f"/streams/{quote(s.name, safe='')}/",
                detail=f"{s.retention}, {s.messages:,} message{'s' * (s.messages != 1)}",
                health="dead" if waiting else "warn" if near else "ok",
                health_text="; ".join(problems),
                dead_letters=waiting,
                dead_letters_url=dead_letters_url(s.name) if waiting else "",
            )
        )
    for sid, subject, service, count in counts:
        rate = count / seconds
        sub = subject_node(groups[subject])
        pub = service or NO_SERVICE
        g.node(
            Node(
                id=f"publisher:{pub}",
                kind="publisher",
                label=pub,
                detail="service header" if service else "events without the service header",
            )
        )
        g.edge(f"publisher:{pub}", sub, rate)
        g.edge(sub, f"stream:{streams[sid].name}", rate)
    for sid, subjects in idle_subjects.items():
        for subject in subjects:
            g.edge(subject_node(groups[subject]), f"stream:{streams[sid].name}", 0.0)

    # Consumers, their rate (what their filters match in the window) and health.
    by_stream: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for sid, subject, _, count in counts:
        by_stream[sid].append((subject, count))
    before = _lag_before(now - TREND)
    deliver_owner = {
        subject: name for (kind, name), xs in subs.items() if kind == "connection" for subject in xs
    }
    consumers = Consumer.objects.filter(deleted_at__isnull=True, stream_id__in=list(streams))
    for c in consumers.order_by("name"):
        stream = streams[c.stream_id]
        filters = _filters(c.config or {})
        matched = sum(
            n
            for subject, n in by_stream[c.stream_id]
            if not filters or any(subject_matches(f, subject) for f in filters)
        )
        lag, then = c.lag, before.get((c.stream_id, c.name))
        problems, health = [], "ok"
        if then is not None and lag > then:
            problems.append(f"lag growing ({then:,} → {lag:,} in a minute)")
            health = "warn"
        waiting = dead.get((stream.name, c.name), 0)
        if waiting:
            problems.insert(0, dead_letters_text(waiting))
            health = "dead"
        cid = f"consumer:{stream.name}/{c.name}"
        detail = f"lag {lag:,}" + (f"; filters {', '.join(filters)}" if filters else "")
        g.node(
            Node(
                id=cid,
                kind="consumer",
                label=c.name,
                detail=detail,
                health=health,
                health_text="; ".join(problems),
                url=f"/streams/{quote(stream.name, safe='')}/consumers/{quote(c.name, safe='')}/",
                dead_letters=waiting,
                dead_letters_url=dead_letters_url(stream.name, c.name) if waiting else "",
            )
        )
        g.edge(f"stream:{stream.name}", cid, matched / seconds)
        deliver = (c.config or {}).get("deliver_subject")
        owner, how = deliver_owner.get(deliver or ""), "connection"
        if owner is None:
            owner, how = demo_service(stream.name, c.name), "demo naming"
        if owner:
            _service(g, owner, how)
            g.edge(cid, f"service:{owner}", note="consumes")

    # Micro services serve their endpoints; named connections subscribe to subjects.
    group_patterns = [n.label for n in g.nodes.values() if n.kind == "subject"]
    # Micro services first: where a connection has the same name, "serves" says more.
    for (kind, name), subjects in sorted(
        subs.items(), key=lambda kv: (kv[0][0] != "service", kv[0])
    ):
        targets = set()
        for subject in subjects:
            if subject in deliver_owner and kind == "connection" and subject.startswith("_INBOX."):
                continue  # a push consumer's inbox: drawn through its consumer
            overlapping = [p for p in group_patterns if patterns_overlap(p, subject)]
            targets.update(overlapping or [groups.get(subject) or subject])
        if not targets and kind == "connection":
            continue  # a connection with no application subscription: a publisher at most
        _service(g, name, "micro service" if kind == "service" else "connection")
        for pattern in sorted(targets):
            if f"subject:{pattern}" not in g.nodes:
                members.setdefault(pattern, set())
                subject_node(pattern)
            g.edge(
                f"subject:{pattern}",
                f"service:{name}",
                note="serves" if kind == "service" else "subscribes",
            )
    g.notes.extend(_probe_notes())
    return g


def _service(g: Graph, name: str, how: str) -> None:
    node = g.node(Node(id=f"service:{name}", kind="service", label=name, detail=how))
    if how not in node.detail.split(", "):
        node.detail += f", {how}"


def _probe_notes() -> list[str]:
    probes = {p.source: p for p in DiscoveryProbe.objects.all()}
    connz = probes.get("connz")
    if connz is None:
        return [
            "Connections and micro services: not discovered yet (the tap asks NATS every 15 s)."
        ]
    if not connz.ok:
        return [
            f"Connections unknown: {connz.note}. Consumers are linked to services by naming only."
        ]
    return []
