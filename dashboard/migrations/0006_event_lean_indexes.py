"""Fewer B-trees on the event table: it takes every event the tap sees, and each B-tree on it
costs PostgreSQL about 1.5 to 2 µs of CPU per row (measured with COPY on 2 cores, issue #4).

- `(stream_id, seq, ts)` stays: it keeps the table exactly-once and serves a stream's newest
  events (`seq DESC`; events without a sequence: `seq IS NULL ... ts DESC`) and lookups by
  stream and sequence, the way JetStream users name a message.
- `ts` and `id` get BRIN indexes instead of B-trees: both grow with arrival order, so a BRIN
  (a few pages per partition, almost free to maintain) finds a time range or an id. The primary
  key constraint on (id, ts) goes: `id` is unique by construction (an identity column no one
  writes), and Django still treats it as the model's key.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE flowscope_event DROP CONSTRAINT flowscope_event_pkey;
DROP INDEX flowscope_event_ts;
CREATE INDEX flowscope_event_ts_brin ON flowscope_event USING brin (ts);
CREATE INDEX flowscope_event_id_brin ON flowscope_event USING brin (id);
"""

BACKWARD = """
DROP INDEX flowscope_event_id_brin;
DROP INDEX flowscope_event_ts_brin;
CREATE INDEX flowscope_event_ts ON flowscope_event (ts);
ALTER TABLE flowscope_event ADD PRIMARY KEY (id, ts);
"""


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0005_stream_state_at")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
