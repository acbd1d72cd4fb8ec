"""Subject grouping and pattern matching for the topology (pure functions)."""

from __future__ import annotations

from dashboard.topology_grouping import group_subjects, patterns_overlap, subject_matches


def test_it_groups_subjects_by_their_first_two_tokens():
    groups = group_subjects(
        [
            "orders.created",
            "orders.created.eu",
            "orders.created.us",
            "orders.paid",
            "payments.authorized.card",
        ]
    )
    assert groups == {
        "orders.created": "orders.created",
        "orders.created.eu": "orders.created.>",
        "orders.created.us": "orders.created.>",
        "orders.paid": "orders.paid",
        "payments.authorized.card": "payments.authorized.>",
    }


def test_ten_thousand_subjects_become_a_bounded_readable_set():
    subjects = [f"user.{i}.updated" for i in range(9_000)]
    subjects += [
        f"orders.{kind}.{i}" for kind in ("created", "paid", "shipped") for i in range(300)
    ]
    subjects += [f"sensor.{i % 7}.reading.{i}" for i in range(100)]
    groups = group_subjects(subjects)
    assert len(groups) == 10_000
    assert sorted(set(groups.values())) == sorted(
        ["user.>", "orders.created.>", "orders.paid.>", "orders.shipped.>"]
        + [f"sensor.{i}.>" for i in range(7)]
    )
    assert groups["user.42.updated"] == "user.>"


def test_too_many_groups_fall_back_to_fewer_tokens():
    subjects = [f"app{a}.svc{b}.x" for a in range(10) for b in range(10)]  # 100 two-token groups
    groups = group_subjects(subjects, max_groups=48)
    assert sorted(set(groups.values())) == sorted(f"app{a}.>" for a in range(10))
    many_top = [f"t{i}.x" for i in range(500)]
    assert set(group_subjects(many_top).values()) == {">"}


def test_wildcard_patterns_group_like_subjects():
    assert group_subjects(["orders.>", "orders.*.eu", "inventory.>"]) == {
        "orders.>": "orders.>",
        "orders.*.eu": "orders.*.>",
        "inventory.>": "inventory.>",
    }


def test_nats_wildcards_match_and_overlap():
    assert subject_matches("orders.>", "orders.created.eu")
    assert not subject_matches("orders.>", "orders")
    assert subject_matches("orders.*.eu", "orders.created.eu")
    assert not subject_matches("orders.*", "orders.created.eu")
    assert not subject_matches("orders.created", "orders.paid")
    assert patterns_overlap("orders.created.>", "orders.*.eu")
    assert patterns_overlap("payments.>", "payments.authorized")
    assert not patterns_overlap("payments.>", "orders.>")
    assert patterns_overlap(">", "a.b")
