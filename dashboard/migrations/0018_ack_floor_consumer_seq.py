"""The ack floor in deliveries (CONSUMER.INFO's ack_floor.consumer_seq), for the ack rate: the
stream sequence of a filtered consumer's floor also passes the other subjects' messages, so its
rise overstated the acks. Samples taken before have none (NULL): their rate is unknown."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dashboard', '0017_naks'),
    ]

    operations = [
        migrations.AddField(
            model_name='consumer',
            name='ack_floor_consumer_seq',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='consumersample',
            name='ack_floor_consumer_seq',
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
