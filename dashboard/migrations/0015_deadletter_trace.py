"""Dead letters by trace id (issue #16): the event journey page finds a trace's dead letters by
the trace id of their `traceparent` header (dashboard/traces.py, DEAD_LETTER_TRACE), through an
index on that expression instead of reading every dead letter's headers."""

from django.db import migrations

FORWARD = (
    "CREATE INDEX IF NOT EXISTS flowscope_deadletter_trace ON flowscope_deadletter "
    "((lower(substr(btrim(headers ->> 'traceparent'), 4, 32))));"
)
BACKWARD = "DROP INDEX IF EXISTS flowscope_deadletter_trace;"


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0014_replay")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
