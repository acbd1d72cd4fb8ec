"""A B-tree on (subject in byte order, ts) for the event browser (issue #13).

A subject filter is the commonest search; over the B-tree on ts alone, a rare subject in a wide
window meant reading every newer event of the window (bench/search.py: p95 128 ms at 10 M).
With this index an exact subject is one backward index scan, and a wildcard with a literal
prefix (`audit.*`, `orders.eu.>`) first lists the few stored subjects under that prefix by
skipping through the index (dashboard/search/query.py `stored_subjects`), then merges one scan
per subject. Byte order (COLLATE "C"), so that a prefix is a range whatever the database's
collation (a linguistic one sorts punctuation in ways a range cannot follow).
"""

from django.db import migrations

FORWARD = 'CREATE INDEX flowscope_event_subject_ts ON flowscope_event ((subject COLLATE "C"), ts);'
BACKWARD = "DROP INDEX IF EXISTS flowscope_event_subject_ts;"


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0011_event_ts_btree")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
