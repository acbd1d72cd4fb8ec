"""What the tap announces after each committed batch (core NATS, `<prefix>.digest.*`).

The web processes subscribe once each and fan the digests out to their websockets, so no
browser makes the database work. Digests are compact and bounded whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from eventbus.records import NEWEST, pg_micros_to_datetime
from eventbus.writer import Committed

TOP_SUBJECTS = 50


def events_digest(committed: Committed, names: dict[int, str]) -> bytes:
    # The newest by stream time among the last ones written: a batch is in arrival order, which
    # is time order per stream, so sorting the whole batch (thousands) would buy nothing.
    newest = sorted(committed.newest, key=lambda e: (e[1][1], e[1][0] or 0))[-NEWEST:]
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
        "subjects": dict(committed.subjects.most_common(TOP_SUBJECTS)),
        "subject_count": len(committed.subjects),
        "newest": [
            {
                "stream": names.get(sid, str(sid)),
                "seq": seq,
                "ts": pg_micros_to_datetime(ts).isoformat(),
                "subject": subject.decode("utf-8", "replace")
                if isinstance(subject, bytes)
                else subject,
                "size": size,
                "service": service,
                "trace_id": trace_id,
                "msg_id": msg_id,
            }
            for sid, (seq, ts, subject, size, service, trace_id, msg_id) in reversed(newest)
        ],
        "gaps": [
            {
                "stream": names.get(g.stream_id, str(g.stream_id)),
                "first_seq": g.first_seq,
                "last_seq": g.last_seq,
            }
            for g in committed.gaps
        ],
        "total": committed.count,
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
