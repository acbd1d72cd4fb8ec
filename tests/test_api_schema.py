"""Schemathesis against /api/openapi.json, in-process (Django's WSGI app), logged in: every
operation, with data that fits its schema and data that does not, answers no 5xx. Each
operation also runs with the names of a stream and a consumer that exist, so the parameters
reach the code past the 404."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from dashboard.models import Checkpoint, Consumer, ConsumerSample, Stream, StreamSample

EXAMPLES = 25  # per operation, mode and naming: about 10 s for the five stream operations
KNOWN = {"name": "ORDERS%#é", "consumer": "billing?&"}


@pytest.fixture
def same_connection() -> Any:
    """The WSGI app runs in the test's thread: keep Django from closing the test's connection
    at each request's end (as Django's own test client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _known_stream() -> None:
    now = datetime.now(UTC)
    stream = Stream.objects.create(
        name=KNOWN["name"],
        created=now,
        retention="limits",
        subjects=["orders.>"],
        config={"subjects": ["orders.>"]},
    )
    Checkpoint.objects.create(stream=stream, last_seq=10, recorded=10)
    Consumer.objects.create(stream=stream, name=KNOWN["consumer"], last_seen=now, num_pending=3)
    for i in range(20):
        ts = now - timedelta(seconds=5 * i)
        StreamSample.objects.create(stream=stream, ts=ts, last_seq=100 - i)
        ConsumerSample.objects.create(stream=stream, ts=ts, consumer=KNOWN["consumer"],
                                      num_pending=i)  # fmt: skip


def test_no_operation_answers_a_server_error(transactional_db, same_connection, alice):
    _known_stream()
    client = Client()
    client.login(username=alice[0], password=alice[1])
    session = {"sessionid": client.cookies["sessionid"].value}
    from django.contrib.auth.models import User

    from dashboard import tokens

    token, _ = tokens.create(User.objects.get(username=alice[0]), "schemathesis")
    schema = schemathesis.openapi.from_wsgi(
        "/api/openapi.json",
        get_wsgi_application(),
        headers={"Authorization": f"Bearer {token}"},  # the document needs a login
    )
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 5
    started, statuses = time.monotonic(), Counter[int]()
    for operation in operations:
        names = {k: v for k, v in KNOWN.items()
                 if k in {p.name for p in operation.path_parameters}}  # fmt: skip
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for fixed in ({}, names) if names else ({},):
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

                @given(case=strategy)
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))  # fmt: skip
                def check(case: Any) -> None:
                    response = case.call_and_validate(cookies=session,
                                                      checks=[not_a_server_error])  # fmt: skip
                    statuses[response.status_code] += 1

                check()
    print(f"{statuses.total()} calls in {time.monotonic() - started:.1f} s: {dict(statuses)}")
    # logged in: the calls reach the views (200), their checks (400) and lookups (404)
    assert statuses[200] and statuses[400] and statuses[404], statuses
