"""The run's vocabulary, defined once: the trained variants, run names, test protocols, metric names and the results
file with its keys.

Training writes through these names (module, recorder, CLI), the report and the dashboard read through them, and
paper.py keys its numbers by them, so a variant or a metric is renamed here or nowhere.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

# ---- variants: the rows of the paper's Table 2 ------------------------------------------------------------------
NOSPP, SPP_SINGLE, SPP_MULTI, SPP_RANDOM = "nospp", "spp_single", "spp_multi", "spp_random"
SizeSchedule = Literal["fixed", "alternate", "random"]
TRAIN_SIZES: tuple[int, int] = (224, 180)
"""The two input sizes of multi-size training (section 2.3): 224 first, then 180 (the 224 crop resized)."""


@dataclass(frozen=True)
class Variant:
    """How one row of the table is trained: the pooling head and which input size each epoch trains at."""

    name: str
    head: Literal["nospp", "spp"]
    size_schedule: SizeSchedule
    title: str
    """The row's label, as the paper's Table 2 prints it."""


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant(NOSPP, "nospp", "fixed", "(a) no SPP"),
    Variant(SPP_SINGLE, "spp", "fixed", "(b) SPP single-size trained"),
    Variant(SPP_MULTI, "spp", "alternate", "(c) SPP multi-size trained"),
    Variant(SPP_RANDOM, "spp", "random", "SPP random-size trained [180, 224]"),
)}
TABLE_VARIANTS: tuple[str, ...] = (NOSPP, SPP_SINGLE, SPP_MULTI)
"""The three rows every backbone has in Table 2 (random-size was trained for Overfeat-7 only)."""
BASELINE = NOSPP
"""The row the SPP gains are measured against."""


def variant_name(head: str, size_schedule: str) -> str:
    """The variant a (head, size schedule) pair trains: nospp / spp_single / spp_multi / spp_random."""
    for variant in VARIANTS.values():
        if (variant.head, variant.size_schedule) == (head, size_schedule):
            return variant.name
    raise ValueError(
        f"head {head!r} with size schedule {size_schedule!r} is not a trained variant: a no-SPP network has a fixed "
        "input size, so it trains with size_schedule 'fixed' only"
    )


SEED_SUFFIX = "-seed"


def run_name(backbone: str, variant: str, seed: int = 0) -> str:
    """`{backbone}-{variant}`, and `-seed{N}` for a seed other than 0: the run's folder under runs_dir/experiment and
    its wandb name. Seed 0 keeps the plain name, so the runs made before seeds were named stay where they are."""
    return f"{backbone}-{variant}" + (f"{SEED_SUFFIX}{seed}" if seed else "")


def run_seed(seed_everything: Any) -> int:
    """The run's seed: `seed_everything` as a whole number (a random seed would give every restart another run)."""
    if type(seed_everything) is not int or seed_everything < 0:
        raise ValueError(f"seed_everything must be a whole number >= 0 (it names the run and its data order), "
                         f"got {seed_everything!r}")
    return seed_everything


def split_run_name(name: str) -> tuple[str, str, int] | None:
    """(backbone, variant, seed) of a run name made by `run_name`, or None for a name of another form."""
    stem, suffix, seed = name.rpartition(SEED_SUFFIX)
    if suffix and seed.isdigit() and str(int(seed)) == seed and int(seed) != 0:
        name, seed_number = stem, int(seed)
    else:
        seed_number = 0
    backbone, _, variant = name.rpartition("-")  # variant names hold no '-'; backbone names (timm) may
    return (backbone, variant, seed_number) if backbone and variant in VARIANTS else None


# What a model section that names none of them trains (SppClassifier's defaults).
DEFAULT_BACKBONE = "zf5"
DEFAULT_HEAD: Literal["nospp", "spp"] = "spp"
DEFAULT_SIZE_SCHEDULE: SizeSchedule = "fixed"


def config_run_name(model: Mapping[str, Any], seed: int = 0) -> str:
    """The run name of a config's `model` section and seed, without building the model (job scripts need it fast)."""
    variant = variant_name(model.get("head", DEFAULT_HEAD), model.get("size_schedule", DEFAULT_SIZE_SCHEDULE))
    return run_name(model.get("backbone", DEFAULT_BACKBONE), variant, seed)


# ---- test protocols -----------------------------------------------------------------------------------------------
TestViews = Literal["center", "tenview", "full", "multiscale", "tenview_fmap"]
TEST_PROTOCOLS: tuple[str, ...] = get_args(TestViews)
TABLE_PROTOCOL = "tenview"
"""The paper's Table 2 protocol: 4 corners + center of the s=256 image, each flipped, softmax averaged."""

# ---- metric names (what the module logs, what the recorder, report and dashboard read) ---------------------------
TRAIN_LOSS = "train/loss"
TRAIN_EPOCH_LOSS = "train/epoch_loss"
TRAIN_SIZE = "train/size"
TRAIN_IMAGES_PER_S = "train/images_per_s"
LR = "lr"


def top1_metric(stage: Literal["val", "test"]) -> str:
    return f"{stage}/top1_err"


def top5_metric(stage: Literal["val", "test"]) -> str:
    return f"{stage}/top5_err"


def images_metric(stage: Literal["val", "test"]) -> str:
    return f"{stage}/images"


MONITOR = top1_metric("val")
"""The metric best.ckpt and the plateau schedule follow (lower is better)."""

# ---- what the data hands the model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelStatistics:
    """The training set's pixel statistics in 0-255 scale: per-channel mean, and the eigen-decomposition of the RGB
    covariance for AlexNet's PCA colour noise (`pca_eigvec[i]` is the unit eigenvector of `pca_eigval[i]`)."""

    mean_rgb: tuple[float, float, float]
    pca_eigval: tuple[float, float, float]
    pca_eigvec: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]


IMAGENET_PIXEL_STATISTICS = PixelStatistics(
    mean_rgb=(123.675, 116.28, 103.53),
    # the widely used [0, 1]-scale eigenvalues (0.2175, 0.0188, 0.0045) times 255^2
    pca_eigval=(14144.0, 1222.5, 292.6),
    pca_eigvec=((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203)),
)
"""Used where no train manifest is at hand (a bare model, timm's default cfg); runs use their manifest's."""

# ---- the per-epoch summary ----------------------------------------------------------------------------------------
SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = ("epoch", "train_size", "lr", "train_loss", "val_top1_err", "val_top5_err", "train_images_per_s")
"""One row per trained epoch, in the run directory: the learning curve that `spp-cls table --curves` shows."""

# ---- the results file -------------------------------------------------------------------------------------------
RESULTS_FILE = "results.json"
RESULTS_PATTERN = "results_*.json"


@dataclass(frozen=True)
class ResultsRecord:
    """What one results file holds: a trained and tested run under one test protocol. The recorder writes it, the
    report checks every file against these fields (and tolerates extra keys)."""

    backbone: str
    variant: str
    experiment: str
    test_protocol: str
    top1_err: float = field(metadata={"percent": True})
    top5_err: float = field(metadata={"percent": True})
    num_test_images: int
    epochs: int
    train_images_per_s: float
    wall_time_s: float
    git_commit: str | None
    """None outside a git checkout."""
    config_hash: str
    run_dir: str
    finished_at: str
    """ISO 8601, UTC."""
    seed: int = 0
    """`seed_everything` of the run (its weights, data order and augmentation); files written before seeds were
    recorded hold none and count as seed 0."""


RESULTS_KEYS: tuple[str, ...] = tuple(entry.name for entry in fields(ResultsRecord))


def results_filename(protocol: str) -> str:
    """results.json for the paper's 10-view test; results_<protocol>.json for the others, so none overwrites it."""
    return RESULTS_FILE if protocol == TABLE_PROTOCOL else f"results_{protocol}.json"


# ---- wandb: where runs log, and what the dashboard adds beside them ---------------------------------------------
WANDB_PROJECT = "spp-cls"
EPOCH = "epoch"
"""The x-axis of the per-epoch curves: Lightning adds the epoch to every row it logs."""
DASHBOARD_JOB_TYPE = "dashboard"
"""The job type of the run `spp-cls dashboard` uploads the table figure with; it holds no result of its own."""
