"""What the event browser's search needs from the database (issue #13, dashboard/search/).

- `flowscope_event_msg_id`: a partial B-tree on msg_id, so "find message id X" is a lookup.
  Partial: only events that carry a Nats-Msg-Id pay for it at ingest.
- `flowscope_try_jsonb(bytea)`: a payload as jsonb, or NULL when it is not JSON in UTF-8 (a
  cast would abort the whole query at the first binary payload). The search narrows rows by
  their bytes first, so it parses few.
"""

from django.db import migrations

FORWARD = """
CREATE INDEX flowscope_event_msg_id ON flowscope_event (msg_id) WHERE msg_id IS NOT NULL;
CREATE OR REPLACE FUNCTION flowscope_try_jsonb(b bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN convert_from(b, 'UTF8')::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;
"""

BACKWARD = """
DROP FUNCTION IF EXISTS flowscope_try_jsonb(bytea);
DROP INDEX IF EXISTS flowscope_event_msg_id;
"""


class Migration(migrations.Migration):
    dependencies = [("dashboard", "0008_topology_endpoints")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
