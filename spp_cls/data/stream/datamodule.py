"""`ShardDataModule`: the LightningDataModule over the webdataset shards written by `spp-cls shards`.

Batches (all uint8 images; docs/data.md, "What the data hands the model"):
- train: ``(images [B, 3, 224, 224], labels int64 [B])``, B = ``batch_size`` per rank. With ``decode="device"``
  the loader yields a :class:`~spp_cls.data.stream.jpeg_batch.JpegBatch` (the same B samples and windows, still
  JPEG-encoded) and this module's ``on_after_batch_transfer`` hook turns it into that pair on the training device
  (nvImageCodec, :mod:`~spp_cls.data.stream.nvimgcodec_decode`), so a LightningModule receives the same batches
  either way;
- validate (center crop): :class:`~spp_cls.data.stream.pipeline.EvalBatch` ``(images [B, 3, 224, 224], labels int64
  [B], valid bool [B], keys)``;
- test (the val shards under a test protocol): ``EvalBatch(views [B, V, 3, H, W], labels, valid, keys)``,
  V = 1 (center, full), 10 (tenview), 96 (multiscale); ``full`` uses B = 1 (the images differ in size).

Exactness under DDP (ddp, ddp_spawn, torchrun, srun alike: rank and world size come from the trainer in
``setup``, never from environment variables):
- train: every rank yields ``floor(total / (batch_size * world_size))`` full batches per epoch from an endless
  resampled stream, so no rank waits for another whatever the shard sizes;
- validate/test: each evaluation stream (rank x loader worker) reads its own val shards, or with fewer val shards
  than ranks its own range of samples, once (:mod:`spp_cls.data.stream.eval_shards`); every rank is padded to the
  same number of batches with masked samples (``valid`` False). A module that sums correct and counted samples over
  ranks must count exactly ``expected_count(stage)``.

Corrupt and missing samples (undecodable, or lost from a shard shorter than its manifest says), and samples past a
shard's manifest count (not read), are logged and counted by shard, and judged over all ranks against
``max_corrupt_fraction`` of the pass's samples (:mod:`spp_cls.data.stream.corrupt`); past it every rank stops at the
same batch with :class:`~spp_cls.data.stream.corrupt.TooManyCorruptSamples`.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import select
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import webdataset as wds
from pytorch_lightning.utilities import rank_zero_info

from spp_cls.data.manifest import Manifest, ManifestError
from spp_cls.data.stream.corrupt import (
    CorruptBudget,
    DecodeFailures,
    Reduce,
    ReportingStream,
    batches_after_reports,
    judged_batches,
)
from spp_cls.data.stream.eval_shards import EvalAssignment, eval_assignment, eval_streams_per_rank, stream_samples
from spp_cls.data.stream.jpeg_batch import JpegBatch, JpegTrainStream
from spp_cls.data.stream.nvimgcodec_decode import DECODE_BACKENDS, BatchDecoder, DecodeBackend, load_nvimgcodec
from spp_cls.data.stream.pipeline import TRAIN_CROPS, EvalBatch, EvalStream, TrainCrop, TrainStream
from spp_cls.data.stream.views import center_view, stacked_views
from spp_cls.protocol import PixelStatistics, TestViews
from spp_cls.view_protocols import CROP, TEST_SHORTER_SIDE, view_protocol

EvalStage = Literal["validate", "test"]
Decode = Literal["cpu", "device"]
DECODES = ("cpu", "device")
# imported once by the server that starts the loader workers, so that starting one costs a fork, not an import
WORKER_PRELOAD = ["__main__", "spp_cls.data.stream.pipeline", "spp_cls.data.stream.jpeg_batch"]


def loader_worker_context() -> multiprocessing.context.BaseContext:
    """Loader workers start from a forkserver, not by fork() of the training process.

    NOTE: a rank process runs other threads (Lightning's child-process observer under `ddp`, the pin-memory thread,
    the gloo/NCCL threads); a fork() that lands while one of them holds a lock leaves the child deadlocked inside
    fork(), and the rank then waits for its batch forever. Seen here: 3 hangs in about 150 two-rank CPU runs, the
    stuck worker's stack ending in os.fork(); pytorch/pytorch#130610 reports the same with the pin-memory thread.
    The forkserver is a single-threaded process started once per rank (by fork + exec); the script that started
    training is imported there as `__mp_main__`, so its top-level code must sit behind `if __name__ == "__main__"`.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def follow_rank(rank_pid: int, worker_id: int) -> None:
    """The loader workers' ``worker_init_fn``: a worker ends as soon as the rank process that owns it ends.

    NOTE: a worker started from the forkserver is the forkserver's child, so torch's own check (the worker's parent
    has changed) never fires when the rank is killed, and the worker keeps the forkserver alive in turn: both lived
    on with their shuffle buffers after a SIGKILLed rank, for as long as the node did. A thread watches the rank's
    pidfd instead (readable once the rank has exited).
    """
    try:
        rank = os.pidfd_open(rank_pid)
    except ProcessLookupError:
        os._exit(1)

    def exit_with_rank() -> None:
        select.select([rank], [], [])
        os._exit(1)

    threading.Thread(target=exit_with_rank, name="follow-rank", daemon=True).start()


def pad_batches(batches: Iterable[EvalBatch], total: int, padding: EvalBatch) -> Iterator[EvalBatch]:
    """Yields ``batches`` then ``padding`` until ``total`` batches have been yielded (a stream never yields more: it
    reads no shard past its manifest's count)."""
    count = 0
    for batch in batches:
        count += 1
        yield batch
    for _ in range(total - count):
        yield padding


class ShardDataModule(pl.LightningDataModule):
    """Streams the train and val shards under ``root`` (``root/train``, ``root/val``).

    Args:
        root: the ``--out`` directory of `spp-cls shards`.
        batch_size: training batch per rank (the global batch is ``batch_size * world_size``).
        num_workers: DataLoader worker processes per rank (0: load in the main process).
        eval_workers: loader workers per rank for validation and test (default ``num_workers``). Each reads whole
            val shards: with fewer val shards than ranks x eval workers a rank runs as many as the shards feed (one
            log line says so), and with fewer val shards than ranks each rank reads one range of samples in one.
        train_crop: ``"five"`` (the paper: 4 corners + center of the whole image) or ``"random"`` positions.
        shuffle_buffer: samples per loader worker in the shuffle buffer (raw JPEG bytes, before decoding).
        eval_batch_size: images per validation/test batch; default ``batch_size`` for validation and
            ``max(1, batch_size // V)`` for a test protocol of V views (about as many crops as a train batch).
            The ``full`` protocol always uses 1.
        test_views: the test protocol: ``center``, ``tenview`` (the paper's Table 2), ``full``, ``multiscale``, or
            ``tenview_fmap`` (the 10 windows taken on the conv maps of the whole image and its flip).
        seed: the data seed (shard order, shuffle, crops); the run's other seeds are not used here.
        max_corrupt_fraction: corrupt or missing samples a pass (training epoch, validation or test) tolerates over
            all ranks, as a fraction of the samples its manifest lists.
        decode: where training JPEGs are decoded: ``"cpu"`` in the loader workers, or ``"device"``: the workers only
            read headers and draw the windows, and :meth:`on_after_batch_transfer` decodes each batch's windows on
            the training device with NVIDIA nvImageCodec (batched, on a side CUDA stream; its CPU backend when
            training on the CPU), so the CPU cores stop limiting a GPU run. The same windows, flips and labels for
            the same seed either way. Validation and test decode on the CPU loader workers either way (their views
            are resized from the whole image, and an evaluation pass is a small part of a run).
        decode_backend: nvImageCodec's backend for ``decode="device"``: ``"auto"`` (hardware JPEG engines where the
            GPU has them, then CUDA, hybrid, CPU, chosen per file), ``"hardware"``, ``"cuda"``, ``"hybrid"`` or
            ``"cpu"``.

    Attributes:
        decode_failures: the files that pass the workers' header check but fail to decode on the device; each is
            added to the training epoch's budget, judged over all ranks with the workers' reports.
        budgets: the corrupt budget of the latest pass of each kind (``"fit"``: a training epoch, ``"validate"``,
            ``"test"``), with its counts over all ranks.
    """

    def __init__(
            self,
            root: str,
            batch_size: int = 128,
            num_workers: int = 8,
            eval_workers: int | None = None,
            train_crop: TrainCrop = "five",
            shuffle_buffer: int = 2000,
            eval_batch_size: int | None = None,
            test_views: TestViews = "tenview",
            seed: int = 0,
            max_corrupt_fraction: float = 0.001,
            decode: Decode = "cpu",
            decode_backend: DecodeBackend = "auto",
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if num_workers < 0 or (eval_workers is not None and eval_workers < 0):
            raise ValueError(f"worker counts must be >= 0, got {num_workers} and {eval_workers}")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"unknown train_crop {train_crop!r}; known: {', '.join(TRAIN_CROPS)}")
        view_protocol(test_views)  # an unknown name: one error now
        if decode not in DECODES:
            raise ValueError(f"unknown decode {decode!r}; known: {', '.join(DECODES)}")
        if decode_backend not in DECODE_BACKENDS:
            raise ValueError(f"unknown decode_backend {decode_backend!r}; known: {', '.join(DECODE_BACKENDS)}")
        if decode == "device":
            load_nvimgcodec()  # one clear error now, not at the first batch, where it is not installed
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_workers = num_workers if eval_workers is None else eval_workers
        self.train_crop = train_crop
        self.shuffle_buffer = shuffle_buffer
        self.eval_batch_size = eval_batch_size
        self.test_views = test_views
        self.seed = seed
        self.max_corrupt_fraction = max_corrupt_fraction
        self.decode = decode
        self.decode_backend = decode_backend
        self._decoders: dict[torch.device, BatchDecoder] = {}
        self.budgets: dict[str, CorruptBudget] = {}
        self.train_manifest = Manifest.load(self.root / "train")
        self.val_manifest = Manifest.load(self.root / "val")
        train_wnids = [c.wnid for c in self.train_manifest.classes]
        if [c.wnid for c in self.val_manifest.classes] != train_wnids:
            raise ManifestError(f"{self.root}: the train and val manifests have different class mappings")
        if self.train_manifest.mean_rgb is None:
            raise ManifestError(f"{self.root / 'train'}: the train manifest has no mean_rgb / PCA statistics")
        self.decode_failures = DecodeFailures([shard.name for shard in self.train_manifest.shards], self.budgets)
        self.rank, self.world_size = 0, 1

    @property
    def num_classes(self) -> int:
        return self.train_manifest.num_classes

    @property
    def pixel_statistics(self) -> PixelStatistics:
        """The train manifest's pixel mean and PCA (0-255 scale): what the model normalises and colour-jitters with."""
        manifest = self.train_manifest
        assert manifest.mean_rgb is not None and manifest.pca_eigval is not None and manifest.pca_eigvec is not None
        return PixelStatistics(manifest.mean_rgb, manifest.pca_eigval, manifest.pca_eigvec)  # type: ignore[arg-type]

    def eval_assignment(self, world_size: int | None = None) -> EvalAssignment:
        """The val shard slices of every evaluation stream (rank x loader worker)."""
        world_size = self.world_size if world_size is None else world_size
        return eval_assignment([shard.count for shard in self.val_manifest.shards], world_size, self.eval_workers)

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        note = self.eval_streams_note()
        if note and stage in ("fit", "validate", "test"):
            rank_zero_info(note)
        if stage == "fit":
            self.train_batches_per_rank(self.world_size)

    def eval_streams_note(self) -> str:
        """What the evaluation streams read when the val shards cannot feed every eval loader worker ('' if they do)."""
        shards, workers = len(self.val_manifest.shards), max(1, self.eval_workers)
        streams = eval_streams_per_rank(shards, self.world_size, workers)
        if shards < self.world_size:
            return (f"spp-cls: {shards} val shards for {self.world_size} ranks: each rank reads one range of about "
                    f"{self.val_manifest.total // self.world_size} val samples in one loader stream")
        if streams < workers:
            return (f"spp-cls: {shards} val shards feed {streams} of the {workers} eval loader workers per rank on "
                    f"{self.world_size} ranks; smaller val shards (`spp-cls shards --val-shard-size`) would feed all")
        return ""

    def expected_count(self, stage: EvalStage) -> int:
        """Images a validation or test pass must count over all ranks: the val manifest's total, less the corrupt or
        missing samples (logged, named and within the budget) that the last such pass met. Samples past a shard's
        manifest count are not read, so they are not counted here (the budget holds them)."""
        if stage not in ("validate", "test"):
            raise ValueError(f"expected_count is for 'validate' or 'test', got {stage!r}")
        budget = self.budgets.get(stage)
        return self.val_manifest.total - (budget.lost if budget is not None else 0)

    def train_batches_per_rank(self, world_size: int | None = None) -> int:
        """Batches every rank yields per training epoch: floor(total / global batch)."""
        world_size = self.world_size if world_size is None else world_size
        global_batch = self.batch_size * world_size
        batches = self.train_manifest.total // global_batch
        if batches < 1:
            raise ValueError(
                f"{self.train_manifest.total} training samples in {self.root / 'train'} make no full global batch "
                f"of {global_batch} ({self.batch_size} x {world_size} ranks): lower data.batch_size"
            )
        return batches

    def eval_batch_size_for(self, stage: EvalStage) -> int:
        """Images per validation or test batch (see ``eval_batch_size``)."""
        protocol = view_protocol(self.test_views)
        if stage == "test" and protocol.whole_image:
            return 1
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return self.batch_size if stage == "validate" else max(1, self.batch_size // protocol.views_per_image)

    def eval_batches_per_rank(self, stage: EvalStage, world_size: int | None = None) -> int:
        """Batches every rank yields in a validation/test pass (padded to the busiest rank)."""
        world_size = self.world_size if world_size is None else world_size
        batch_size = self.eval_batch_size_for(stage)
        assignment = self.eval_assignment(world_size)
        return max(sum(math.ceil(samples / batch_size) for samples in stream_samples(assignment, rank))
                   for rank in range(world_size))

    def train_loader(self, epoch: int, rank: int | None = None, world_size: int | None = None) -> wds.WebLoader:
        """The training batches of one rank for ``epoch``: a pure function of (seed, epoch, rank, world size)."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        batches = self.train_batches_per_rank(world_size)
        stream_class = JpegTrainStream if self.decode == "device" else TrainStream
        stream = stream_class(
            [str(path) for path in self.train_manifest.shard_paths], self.num_classes, self.batch_size,
            shard_counts=[shard.count for shard in self.train_manifest.shards], rank=rank, world_size=world_size,
            seed=self.seed, epoch=epoch, crop_mode=self.train_crop, shuffle_buffer=self.shuffle_buffer,
        )
        budget = partial(self._budget, self.train_manifest, f"training epoch {epoch}", rank, world_size)
        loader = self._loader(ReportingStream(stream), self.num_workers).compose(
            partial(_checked, budget=budget, batches=batches, on_pass=partial(self.budgets.__setitem__, "fit")))
        return loader.with_epoch(nbatches=batches).with_length(batches, silent=True)

    def eval_loader(self, stage: EvalStage, rank: int | None = None, world_size: int | None = None) -> wds.WebLoader:
        """The validation (center crop) or test (``test_views``) batches of one rank, padded to equal length."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        make_views = center_view if stage == "validate" else stacked_views(self.test_views)
        slices = self.eval_assignment(world_size)[rank]
        stream = EvalStream([str(path) for path in self.val_manifest.shard_paths], slices, self.num_classes,
                            self.eval_batch_size_for(stage), make_views)
        batches = self.eval_batches_per_rank(stage, world_size)
        budget = partial(self._budget, self.val_manifest, f"the {stage} pass", rank, world_size)
        checked = partial(_checked, budget=budget, batches=batches, padding=self._padding_batch(stage),
                          on_pass=partial(self.budgets.__setitem__, stage))
        workers = len(slices) if self.eval_workers else 0
        return self._loader(ReportingStream(stream), workers).compose(checked).with_length(batches, silent=True)

    def train_dataloader(self) -> wds.WebLoader:
        if self.trainer is None:
            return self.train_loader(epoch=0)
        if self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise RuntimeError(
                "ShardDataModule builds each epoch's training stream from the epoch number (shard order, shuffle "
                "and crops depend on it): run the Trainer with reload_dataloaders_every_n_epochs=1 "
                f"(it is {self.trainer.reload_dataloaders_every_n_epochs})"
            )
        # NOTE: a run resumed mid-epoch restarts that epoch's stream from its beginning (resampled data makes this
        # statistically harmless); what is resumed is the epoch number, not the position in the sample order.
        return self.train_loader(epoch=self.trainer.current_epoch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``decode="device"``: decodes the windows of a training batch on the device it was sent to.

        Lightning runs a datamodule's override of this hook instead of the LightningModule's (and warns if both
        override it), so a module used with ``decode="device"`` must not override it.
        """
        if isinstance(batch, JpegBatch):
            return self.device_decoder(batch.labels.device)(batch)
        return batch

    def device_decoder(self, device: torch.device) -> BatchDecoder:
        """The decoder of ``decode="device"`` batches sent to ``device`` (one per device, made at its first batch)."""
        if device not in self._decoders:
            # as many CPU threads as torch's pool: the CPUs this rank owns once a run has sized it (RankThreads)
            self._decoders[device] = BatchDecoder(device, self.decode_backend, self.decode_failures,
                                                  cpu_threads=torch.get_num_threads())
        return self._decoders[device]

    def val_dataloader(self) -> wds.WebLoader:
        return self.eval_loader("validate")

    def test_dataloader(self) -> wds.WebLoader:
        return self.eval_loader("test")

    @staticmethod
    def _loader(stream: torch.utils.data.IterableDataset, workers: int) -> wds.WebLoader:
        # persistent_workers stays False: each epoch's stream is a new object (epoch-dependent pipeline).
        return wds.WebLoader(
            stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=False, multiprocessing_context=loader_worker_context() if workers else None,
            worker_init_fn=partial(follow_rank, os.getpid()) if workers else None,
        )

    def _budget(self, manifest: Manifest, what: str, rank: int, world_size: int) -> CorruptBudget:
        """A new pass's budget; its counts are summed over the trainer's ranks when they are the loader's ranks."""
        return CorruptBudget([shard.name for shard in manifest.shards], manifest.total, self.max_corrupt_fraction,
                             f"{what} ({manifest.split} shards)", str(self.root), self._reduce(world_size),
                             announce=rank == 0)

    def _reduce(self, world_size: int) -> Reduce | None:
        trainer = self.trainer
        if world_size == 1 or trainer is None or trainer.world_size != world_size:
            return None
        strategy = trainer.strategy
        return lambda counts: strategy.reduce(counts.to(strategy.root_device), reduce_op="sum")

    def _padding_batch(self, stage: EvalStage) -> EvalBatch:
        """One masked sample shaped like a real batch of ``stage`` (labels 0, valid False)."""
        if stage == "validate":
            images = torch.zeros(1, 3, CROP, CROP, dtype=torch.uint8)
        elif view_protocol(self.test_views).whole_image:
            images = torch.zeros(1, 1, 3, TEST_SHORTER_SIDE, TEST_SHORTER_SIDE, dtype=torch.uint8)
        else:
            images = torch.zeros(1, view_protocol(self.test_views).views_per_image, 3, CROP, CROP, dtype=torch.uint8)
        return EvalBatch(images, torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.bool), [""])


def _checked(items: Iterable[tuple[Any, Any]], budget: Callable[[], CorruptBudget], batches: int,
             on_pass: Callable[[CorruptBudget], None], padding: EvalBatch | None = None) -> Iterator[Any]:
    """The loader's ``(batch, report)`` items as batches, padded to ``batches`` if ``padding`` is given, with a new
    pass's corrupt budget (handed to ``on_pass``) judged on the way. Runs in the training process, anew each time
    the loader is iterated."""
    pass_budget = budget()
    on_pass(pass_budget)
    stream = batches_after_reports(items, pass_budget)
    if padding is not None:
        stream = pad_batches(stream, batches, padding)
    return judged_batches(stream, pass_budget, batches)
