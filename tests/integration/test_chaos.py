"""The short variant of `make chaos`: the whole pipeline, every service SIGKILLed once, the broker
restarted once, bad records on every input topic and bad requests on every endpoint, with fewer
listeners for a shorter time. Every invariant `make chaos` checks must hold."""

from __future__ import annotations

import json

import pytest

from kit.settings import KafkaSettings
from tests.chaos.pipeline_chaos import run


def test_a_short_chaos_run_keeps_every_promise(kafka: KafkaSettings) -> None:
    if not kafka.local_kafka:
        pytest.skip("the broker restart needs the local broker")
    result = run(listeners_n=60, generating=4, seconds=120, seed=2)  # a quarter of the capacity measured here
    print("RESULT " + json.dumps(result))
    assert result["violations"] == 0, json.dumps(result, indent=1)
