"""The benchmarks' exit status (bench/verdict.py): `make bench` fails on a missed target."""

from bench.verdict import exit_status


def test_a_missed_target_fails_the_run_unless_told_otherwise(capsys):
    assert exit_status([], no_targets=False) == 0
    assert exit_status(["page p95"], no_targets=False) == 1
    assert "MISSED: page p95" in capsys.readouterr().out
    assert exit_status(["page p95"], no_targets=True) == 0
