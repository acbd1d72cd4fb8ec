"""Dead letters waiting (issue #15.4, #12): the new ones per (stream, consumer), counted on every
overview, topology and stream page render, from a partial index of the new rows alone (an
index-only scan; replayed and discarded rows are not in it). And the newest dead letters of all,
newest first (the list without a filter and its live pushes), without a sort of the table."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("dashboard", "0015_deadletter_trace"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(
                condition=models.Q(("status", "new")),
                fields=["stream_name", "consumer"],
                name="deadletter_waiting",
            ),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(fields=["-died_at", "-id"], name="deadletter_newest"),
        ),
    ]
