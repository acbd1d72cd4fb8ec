"""What the tap announces after each committed batch (core NATS, `<prefix>.digest.*`).

The web processes subscribe once each and fan the digests out to their websockets, so no
browser makes the database work. Digests are compact and bounded whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from eventbus.writer import Committed

NEWEST = 20  # newest events carried per digest
TOP_SUBJECTS = 50


def events_digest(committed: Committed, names: dict[int, str]) -> bytes:
    subjects: Counter[str] = Counter(e.subject for e in committed.events)
    # The newest by stream time among the last ones written: a batch is in arrival order, which
    # is time order per stream, so sorting the whole batch (thousands) would buy nothing.
    tail = committed.events[-4 * NEWEST :]
    newest = sorted(tail, key=lambda e: (e.ts, e.seq or 0))[-NEWEST:]
    body = {
        "kind": "events",
        "streams": {
            names.get(sid, str(sid)): {
                "stream_id": sid,
                "count": committed.counts.get(sid, 0),
                "last_seq": committed.last_seq.get(sid),
            }
            for sid in set(committed.counts) | set(committed.last_seq)
        },
        "subjects": dict(subjects.most_common(TOP_SUBJECTS)),
        "subject_count": len(subjects),
        "newest": [
            {
                "stream": names.get(e.stream_id, str(e.stream_id)),
                "seq": e.seq,
                "ts": e.ts.isoformat(),
                "subject": e.subject,
                "size": e.size,
                "service": e.service,
                "trace_id": e.trace_id,
                "msg_id": e.msg_id,
            }
            for e in reversed(newest)
        ],
        "gaps": [
            {
                "stream": names.get(g.stream_id, str(g.stream_id)),
                "first_seq": g.first_seq,
                "last_seq": g.last_seq,
            }
            for g in committed.gaps
        ],
        "total": len(committed.events),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def lag_digest(sample: Any) -> bytes:
    body = (
        dataclasses.asdict(sample)
        if dataclasses.is_dataclass(sample) and not isinstance(sample, type)
        else sample
    )
    if isinstance(body, dict):
        body = {"kind": "lag", **body}
    return json.dumps(body, separators=(",", ":"), default=str).encode()
