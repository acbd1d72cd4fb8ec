"""The event browser's time walks, from bench/search.py's figures (10 M events, issue #13).

- A B-tree on ts: "the newest N matching, older than T" becomes a backward index scan that
  stops after N matches, where the BRIN (kept for range scans) had to read and sort every row
  of a window first. At 1 M events it took a subject wildcard from p95 483 to 22 ms and a header
  filter from 1,354 to 10 ms; it costs the tap about 3 µs per event at COPY (bench/README.md).
- flowscope_try_jsonb() PARALLEL RESTRICTED, for databases that ran migration 0009 before it
  said so: its EXCEPTION block starts a subtransaction, which a parallel worker may not.
"""

from django.db import migrations

FORWARD = """
ALTER FUNCTION flowscope_try_jsonb(bytea) PARALLEL RESTRICTED;
CREATE INDEX flowscope_event_ts_btree ON flowscope_event (ts);
"""

BACKWARD = """
DROP INDEX IF EXISTS flowscope_event_ts_btree;
"""


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0010_audit_and_tokens")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
