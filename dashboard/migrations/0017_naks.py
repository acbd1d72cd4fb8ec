"""Naks (issue #15.5): each nak the server reported (its MSG_NAKED advisory), once per
(stream, seq, consumer, delivery), for the dead letter's page; expired by the tap's retention."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0016_deadletter_waiting'),
    ]

    operations = [
        migrations.CreateModel(
            name='Nak',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('stream_name', models.CharField(max_length=255)),
                ('seq', models.BigIntegerField()),
                ('consumer', models.CharField(max_length=255)),
                ('deliveries', models.IntegerField()),
                ('ts', models.DateTimeField()),
            ],
            options={
                'db_table': 'flowscope_nak',
                'indexes': [models.Index(fields=['ts'], name='nak_ts')],
                'constraints': [models.UniqueConstraint(fields=('stream_name', 'seq', 'consumer', 'deliveries'), name='nak_unique')],
            },
        ),
    ]
