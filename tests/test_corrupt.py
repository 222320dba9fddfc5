"""The corrupt-sample budget of a pass: counts by shard, the allowance as a fraction of the pass's samples, the
error naming the worst shards, and the order in which reports and batches reach the training process."""
from __future__ import annotations

import logging

import pytest

from spp_cls.data.stream.corrupt import (
    CorruptBudget,
    CorruptReport,
    CorruptTally,
    MissingSamples,
    TooManyCorruptSamples,
    UnlistedSamples,
    batches_after_reports,
    judged_batches,
    with_reports,
)

SHARDS = ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar", "train-000004.tar"]


def budget(max_fraction: float = 0.01, samples: int = 1000) -> CorruptBudget:
    return CorruptBudget(SHARDS, samples, max_fraction, "training epoch 3 (train shards)", "/data/shards")


def test_a_tally_reports_what_it_met_since_the_last_report_by_shard_index() -> None:
    tally = CorruptTally([f"/s/{name}" for name in SHARDS])
    assert tally.take() is None
    tally.record_corrupt("k1", "/s/train-000003.tar", "JPEG does not decode")
    tally.record_mismatch(MissingSamples("/s/train-000001.tar", 64, "ReadError: unexpected end of data"))
    tally.record_corrupt("k2", "/s/train-000003.tar", "no 'cls' member")
    assert tally.take() == CorruptReport(((1, 64), (3, 2)))
    assert tally.take() is None
    tally.record_mismatch(UnlistedSamples("/s/train-000004.tar", 2))
    assert tally.take() == CorruptReport((), ((4, 2),))


def test_samples_past_a_manifests_count_are_judged_with_the_rest_but_are_not_lost_from_the_pass() -> None:
    pass_budget = budget(0.01, 1000)
    pass_budget.add(CorruptReport((), ((2, 4),)))
    pass_budget.judge()
    assert (pass_budget.count, pass_budget.lost) == (4, 0)  # a pass still evaluates all 1000 it was given
    pass_budget.add(CorruptReport(((2, 3),), ((1, 5),)))
    with pytest.raises(TooManyCorruptSamples) as stopped:
        pass_budget.judge()
    assert (pass_budget.count, pass_budget.lost) == (12, 3)
    assert str(stopped.value).startswith(
        "12 corrupt, missing or unlisted samples in training epoch 3 (train shards), more than the 10 that "
        "max_corrupt_fraction 0.01 allows of its 1000: train-000002.tar (7), train-000001.tar (5);")


def test_the_budget_is_a_fraction_of_the_passs_samples_whenever_they_are_met() -> None:
    pass_budget = budget(0.01, 1000)  # 10 allowed, however few samples were read before
    pass_budget.add(CorruptReport(((2, 10),)))
    pass_budget.judge()
    assert pass_budget.count == 10
    pass_budget.add(CorruptReport(((0, 1), (4, 3), (2, 1), (1, 2))))
    with pytest.raises(TooManyCorruptSamples) as stopped:
        pass_budget.judge()
    assert str(stopped.value) == (
        "17 corrupt or missing samples in training epoch 3 (train shards), more than the 10 that max_corrupt_fraction "
        "0.01 allows of its 1000: train-000002.tar (11), train-000004.tar (3), train-000001.tar (2) and 1 more "
        "shards; check the shards with `spp-cls shards --verify /data/shards`")


def test_with_no_allowance_one_corrupt_sample_stops_the_pass() -> None:
    pass_budget = budget(0.0)
    pass_budget.judge()
    pass_budget.add(CorruptReport(((3, 1),)))
    with pytest.raises(TooManyCorruptSamples, match=r"1 corrupt or missing samples .*: train-000003.tar \(1\);"):
        pass_budget.judge()


def test_a_report_that_comes_after_a_streams_last_batch_is_in_before_that_batch_goes_on() -> None:
    tally = CorruptTally(SHARDS)
    pass_budget = budget()

    def stream():  # a worker's stream that finds a short shard after it made its last batch
        yield "b1"
        yield "b2"
        tally.record_mismatch(MissingSamples(SHARDS[4], 5, "the tar ends early"))

    seen = [(batch, int(pass_budget.local.sum())) for batch in batches_after_reports(with_reports(stream(), tally),
                                                                                     pass_budget)]
    assert seen == [("b1", 0), ("b2", 5)]


def test_the_pass_is_judged_every_check_and_at_its_last_batch_which_logs_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    pass_budget = budget()
    counts = []

    def reports():
        for index in range(4):
            pass_budget.add(CorruptReport(((1, 1),)))
            counts.append(pass_budget.count)  # what was judged before the previous batch went on
            yield index

    with caplog.at_level(logging.WARNING, logger="spp_cls.data.stream.corrupt"):
        assert list(judged_batches(reports(), pass_budget, total=4)) == [0, 1, 2, 3]
    assert pass_budget.check_every == 1 and counts == [0, 1, 2, 3] and pass_budget.count == 4
    assert [record.getMessage() for record in caplog.records] == [
        "4 corrupt or missing samples in training epoch 3 (train shards) (10 allowed): train-000001.tar (4)"]
