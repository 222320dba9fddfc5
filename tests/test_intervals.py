"""Per-image outcomes and the table's 95% intervals: the bootstrap checked against independent closed-form intervals
on known outcomes, seeds, the outcomes file format, and the table that shows them."""
from __future__ import annotations

import csv
import io
import math
import random
from pathlib import Path

import pytest
from helpers import write_result

from spp_cls.outcomes import ImageOutcome, OutcomesError, outcomes_filename, read_outcomes, write_outcomes
from spp_cls.report import table
from spp_cls.report.intervals import IntervalError, error_estimate, gain_estimate
from spp_cls.report.results import collect

Z95 = 1.959964


def wrong_bits(pattern: dict[tuple[bool, ...], int]) -> list[dict[str, bool]]:
    """Runs' {key: wrong} with `pattern[(wrong in run 0, wrong in run 1, ...)]` images of each combination."""
    runs: list[dict[str, bool]] = [{} for _ in next(iter(pattern))]
    image = 0
    for bits, count in pattern.items():
        for _ in range(count):
            for run, bit in zip(runs, bits):
                run[f"img{image:06d}"] = bit
            image += 1
    return runs


def wilson(wrong: int, n: int) -> tuple[float, float]:
    p = wrong / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return 100 * (centre - half), 100 * (centre + half)


def paired_normal(only_base_wrong: int, only_variant_wrong: int, n: int) -> tuple[float, float]:
    """The large-sample interval of a difference of paired proportions (only the discordant images count)."""
    p10, p01 = only_base_wrong / n, only_variant_wrong / n
    gain = p10 - p01
    half = Z95 * math.sqrt((p10 + p01 - gain ** 2) / n)
    return 100 * (gain - half), 100 * (gain + half)


def test_a_cells_interval_agrees_with_the_wilson_interval_on_known_outcomes() -> None:
    (run,) = wrong_bits({(True,): 600, (False,): 1400})
    estimate = error_estimate([run])
    low, high = wilson(600, 2000)
    assert estimate.value == pytest.approx(30.0) and estimate.seeds == 1 and estimate.spread is None
    assert estimate.low == pytest.approx(low, abs=0.25) and estimate.high == pytest.approx(high, abs=0.25)


@pytest.mark.parametrize(("only_base", "only_variant", "significant"), [(120, 60, True), (70, 60, False)])
def test_a_paired_gain_interval_agrees_with_the_closed_form_paired_interval(only_base: int, only_variant: int,
                                                                            significant: bool) -> None:
    base, variant = wrong_bits({(True, True): 580, (True, False): only_base, (False, True): only_variant,
                                (False, False): 2000 - 580 - only_base - only_variant})
    estimate = gain_estimate([base], [variant])
    low, high = paired_normal(only_base, only_variant, 2000)
    assert estimate.value == pytest.approx(100 * (only_base - only_variant) / 2000)
    assert estimate.low == pytest.approx(low, abs=0.15) and estimate.high == pytest.approx(high, abs=0.15)
    assert estimate.excludes_zero is significant


def test_pairing_on_the_same_images_narrows_the_gain_interval() -> None:
    """The same two error rates, once with the cells wrong on mostly the same images (a real comparison), once
    independent: what the cells share cancels in the paired interval."""
    n = 4000
    agreeing = wrong_bits({(True, True): 1300, (True, False): 100, (False, True): 60, (False, False): n - 1460})
    rng = random.Random(0)
    independent = [{f"img{i:06d}": rng.random() < 0.35 for i in range(n)} for _ in range(2)]
    paired, loose = gain_estimate(agreeing[:1], agreeing[1:]), gain_estimate(independent[:1], independent[1:])
    assert (paired.high - paired.low) < 0.5 * (loose.high - loose.low)


def test_seeds_are_averaged_with_their_spread_and_widen_the_interval() -> None:
    n = 2000
    one = wrong_bits({(True,): 600, (False,): n - 600})
    two = one + wrong_bits({(True,): 680, (False,): n - 680})
    single, both = error_estimate(one), error_estimate(two)
    assert both.value == pytest.approx(32.0) and both.seeds == 2
    assert both.spread == pytest.approx(math.sqrt(2 * 2.0 ** 2))  # the standard deviation of 30.0 and 34.0
    assert (both.high - both.low) > (single.high - single.low)


def test_runs_on_different_images_have_no_paired_interval() -> None:
    base = {"a": True, "b": False}
    with pytest.raises(IntervalError, match="different images"):
        gain_estimate([base], [{"a": True, "c": False}])


def test_outcomes_file_is_compact_for_imagenet_val_sorted_and_round_trips(tmp_path: Path) -> None:
    rng = random.Random(0)
    outcomes = []
    for index in rng.sample(range(1, 50_001), 50_000):
        label = rng.randrange(1000)
        top5 = rng.sample(range(1000), 5)
        if rng.random() < 0.65:
            top5[0] = label if label not in top5[1:] else top5[0]
        outcomes.append(ImageOutcome(f"ILSVRC2012_val_{index:08d}", label, tuple(top5)))
    path = tmp_path / outcomes_filename("tenview")
    write_outcomes(path, outcomes)
    assert path.name == "outcomes.csv.gz" and outcomes_filename("full") == "outcomes_full.csv.gz"
    assert path.stat().st_size < 800_000
    read = read_outcomes(path)
    assert read == sorted(outcomes, key=lambda outcome: outcome.key)


@pytest.mark.parametrize(("content", "message"), [
    (b"not gzip", "cannot read"),
    (None, "expected the columns key,label,top5"),
    (None, "line 3: expected key,label,top5"),
    (None, "was evaluated twice"),
])
def test_a_bad_outcomes_file_is_one_line_naming_it(tmp_path: Path, content: bytes | None, message: str) -> None:
    import gzip

    texts = {
        "expected the columns key,label,top5": "image,label\nx,1\n",
        "line 3: expected key,label,top5": "key,label,top5\nx,1,1 2\ny,one,1\n",
        "was evaluated twice": "key,label,top5\nx,1,1 2\nx,1,2 1\n",
    }
    path = tmp_path / "outcomes.csv.gz"
    path.write_bytes(content if content is not None else gzip.compress(texts[message].encode()))
    with pytest.raises(OutcomesError, match=message) as error:
        read_outcomes(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(OutcomesError, match="was evaluated twice"):
        write_outcomes(tmp_path / "again.csv.gz", [ImageOutcome("x", 1, (1,)), ImageOutcome("x", 1, (1,))])


def _write_cell(root: Path, variant: str, wrong_top1: set[int], images: int = 1000) -> None:
    """A results file and its outcomes: image i wrong at top-1 (and top-5) where i is in `wrong_top1`."""
    outcomes = [ImageOutcome(f"img{i:05d}", 3, (7, 8, 9, 1, 2) if i in wrong_top1 else (3, 7, 8, 9, 1))
                for i in range(images)]
    err = 100 * len(wrong_top1) / images
    path = write_result(root, "zf5", variant, err, err, num_test_images=images)
    write_outcomes(path.parent / "outcomes.csv.gz", outcomes)


def test_the_table_shows_intervals_and_marks_the_gains_that_exclude_zero(tmp_path: Path) -> None:
    _write_cell(tmp_path, "nospp", set(range(400)))                              # 40.0%
    _write_cell(tmp_path, "spp_single", set(range(380)))                         # 38.0%: 20 images better
    _write_cell(tmp_path, "spp_multi", set(range(100, 400)) | set(range(900, 990)))  # 39.0%: 100 better, 90 worse
    results = collect([tmp_path])
    text = table.format_markdown(results)
    single, multi = (table.build_table(results).cell("zf5", v) for v in ("spp_single", "spp_multi"))
    single_gain, multi_gain = single.gain_estimate("top1"), multi.gain_estimate("top1")
    assert single_gain.excludes_zero and not multi_gain.excludes_zero
    assert f"38.00 [{single.error_estimate('top1').low:.2f}, " in text
    assert f"(2.00 [{single_gain.low:.2f}, {single_gain.high:.2f}]*)" in text
    assert f"(1.00 [{multi_gain.low:.2f}, {multi_gain.high:.2f}])" in text
    assert "95% interval over the test images" in text

    rows = {row["variant"]: row for row in csv.DictReader(io.StringIO(table.format_csv(results)))
            if row["backbone"] == "zf5"}
    assert rows["spp_single"]["top1_gain_excludes_zero"] == "1" and rows["spp_multi"]["top1_gain_excludes_zero"] == "0"
    assert float(rows["spp_single"]["top1_gain_low"]) == pytest.approx(single_gain.low, abs=1e-4)
    assert rows["nospp"]["top1_gain_low"] == "" and rows["nospp"]["seeds"] == "0"
    assert table.plot(results, tmp_path / "table.png").stat().st_size > 0


def test_a_cell_without_outcomes_shows_without_intervals_beside_cells_with_them(tmp_path: Path) -> None:
    _write_cell(tmp_path, "nospp", set(range(400)))
    write_result(tmp_path, "zf5", "spp_multi", 39.0, 20.0, num_test_images=1000)  # an older run: no outcomes file
    cells = table.format_markdown(collect([tmp_path]))
    assert "| 40.00 [" in cells and "| 39.00 (1.00) |" in cells
