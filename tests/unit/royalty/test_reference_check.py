"""Royalty's reference check refuses exactly the records its tables cannot use."""

from __future__ import annotations

import copy

import pytest

from kit.consumer import InvalidRecord, Record
from kit.contracts import contract
from kit.settings import KafkaSettings
from royalty.reference_check import check

KAFKA = KafkaSettings.from_env({"ENTRAIN_TOPIC_PREFIX": "t."})


def record(topic: str, value: dict | None = None) -> Record:
    example = contract(topic).examples()[0][1]
    return Record(topic=f"t.{topic}", partition=0, offset=0, timestamp_ms=0, key=example["key"],
                  value=example["value"] if value is None else value, headers=())


@pytest.mark.parametrize("topic", ["catalog.works.v1", "catalog.consent.v1", "soundtrack.segments.v1"])
def test_the_contract_examples_pass(topic: str) -> None:
    check(KAFKA, record(topic))


def test_shares_or_weights_that_do_not_sum_to_a_million_are_refused() -> None:
    work = copy.deepcopy(record("catalog.works.v1").value)
    work["shares"][0]["share_ppm"] -= 1
    with pytest.raises(InvalidRecord, match="sum to 999999 ppm"):
        check(KAFKA, record("catalog.works.v1", work))
    segment = copy.deepcopy(record("soundtrack.segments.v1").value)
    segment["provenance"]["influences"][0]["weight_ppm"] += 5
    with pytest.raises(InvalidRecord, match="influence weights"):
        check(KAFKA, record("soundtrack.segments.v1", segment))
