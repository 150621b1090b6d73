"""The short crash test (the full one is `make crash-royalty`): two royalty instances in one
group, one of them SIGKILLed at random moments and restarted (rebalances between them), the
broker restarted once; every line exactly once, totals exact."""

from __future__ import annotations

from tests.chaos.royalty_crash import run

from kit.settings import KafkaSettings


def test_exactly_once_with_two_instances_through_kills_and_a_broker_restart(kafka: KafkaSettings) -> None:
    result = run(plays_n=5_000, kills=3, broker_restart=kafka.local_kafka, seed=11, instances=2)
    assert result["kills"] == 3 and result["instances"] == 2
    assert result["committed_lines"] == result["expected_lines"] > 30_000
    assert result["doubled"] == result["missing"] == result["unexpected"] == result["wrong_amount"] == 0
    assert result["committed_total_micros"] == result["expected_total_micros"]
    assert result["violations"] == 0
