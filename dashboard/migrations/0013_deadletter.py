"""Dead letters (issue #15): what consumers gave up on, as eventbus/deadletters.py captures it."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0012_event_subject_ts'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeadLetter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('stream_name', models.CharField(max_length=255)),
                ('seq', models.BigIntegerField()),
                ('consumer', models.CharField(blank=True, default='', max_length=255)),
                ('reason', models.CharField(choices=[('max_deliveries', 'delivered the maximum number of times'), ('terminated', 'terminated by the consumer'), ('dlq_stream', 'in a dead-letter stream')], max_length=16)),
                ('terminate_reason', models.TextField(blank=True, default='')),
                ('deliveries', models.IntegerField(default=0)),
                ('subject', models.TextField(blank=True, default='')),
                ('headers', models.JSONField(blank=True, null=True)),
                ('payload', models.BinaryField(default=bytes)),
                ('truncated', models.BooleanField(default=False)),
                ('payload_source', models.CharField(choices=[('stream', 'read from the stream'), ('recorded', "the tap's stored copy"), ('gone', 'gone: neither the stream nor the tap holds it')], max_length=16)),
                ('origin_stream', models.CharField(blank=True, default='', max_length=255)),
                ('origin_seq', models.BigIntegerField(blank=True, null=True)),
                ('died_at', models.DateTimeField()),
                ('captured_at', models.DateTimeField()),
                ('status', models.CharField(choices=[('new', 'New'), ('replayed', 'Replayed'), ('discarded', 'Discarded')], default='new', max_length=16)),
                ('status_note', models.TextField(blank=True, default='')),
                ('stream', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='dead_letters', to='dashboard.stream')),
            ],
            options={
                'db_table': 'flowscope_deadletter',
                'indexes': [models.Index(fields=['status', '-died_at'], name='deadletter_status_died'), models.Index(fields=['stream_name', 'consumer', '-died_at'], name='deadletter_stream_consumer')],
                'constraints': [models.UniqueConstraint(fields=('stream_name', 'seq', 'consumer'), name='deadletter_unique')],
            },
        ),
    ]
