"""The LightningModule of every table cell: a registry network + on-device input processing, exact top-k errors,
SGD with a plateau (or milestone) schedule, and the epoch's training size from the size schedule."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..data.stream.pipeline import EvalBatch
from ..models import PAPER_LEVELS, create
from ..models.init import Init
from ..models.net import Head
from ..models.windows import views_on_feature_maps
from ..outcomes import ImageOutcome, check_unique
from ..protocol import (
    DEFAULT_BACKBONE,
    DEFAULT_HEAD,
    DEFAULT_SIZE_SCHEDULE,
    IMAGENET_PIXEL_STATISTICS,
    LR,
    MONITOR,
    TRAIN_EPOCH_LOSS,
    TRAIN_IMAGES_PER_S,
    TRAIN_LOSS,
    TRAIN_SIZE,
    TRAIN_SIZES,
    PixelStatistics,
    SizeSchedule,
    TestViews,
    images_metric,
    run_name,
    top1_metric,
    top5_metric,
    variant_name,
)
from ..view_protocols import view_protocol
from .augment import InputTransform
from .metrics import PerImageTopK, TopKErrorSums
from .schedule import train_size

LrSchedule = Literal["plateau", "milestones"]
LrScheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


class SppClassifier(pl.LightningModule):
    """One SPP-net table cell.

    Args:
        backbone: zf5, convnet5, overfeat5, overfeat7, or any timm model name.
        head: "spp" (the {6,3,2,1} pyramid) or "nospp" (the baseline's single 6x6 pooling layer).
        num_classes: set from the data's manifest by the CLI.
        width: multiplies every conv and fc width (1.0 = the paper's network; smaller for CPU-scale runs).
        init: "paper" (Gaussian 0.01, AlexNet biases) or "kaiming".
        levels: pyramid levels of the SPP head.
        size_schedule: "fixed" (224), "alternate" (224 on epoch 0, then 180/224 by epoch) or "random" ([180, 224]).
        train_sizes: (first size, second size) of the schedule.
        seed: seeds the random size schedule and the per-epoch RNG (dropout, colour noise); the CLI sets it from
            `seed_everything`, and a seed other than 0 names the run (`zf5-spp_multi-seed1`).
        lr: learning rate for a global batch of `reference_batch`; the optimiser uses
            lr * global_batch / reference_batch (linear scaling).
        lr_schedule: "plateau" divides by 10 when val top-1 error stops improving, at most `lr_drops` times;
            "milestones" divides by 10 at the epochs in `milestones`.
        pca_std: sigma of AlexNet's PCA colour noise (0 disables it).
        channels_last: run the network in NHWC memory format (faster on GPUs with tensor cores).
        compile: torch.compile the network (static shapes: one graph per training size).
        pixel_statistics: the training set's mean and PCA, set from the train manifest by the CLI (ImageNet's when
            None).
        test_views: the test protocol (`view_protocols.VIEW_PROTOCOLS`), set from the datamodule's by the CLI: how
            `test_step` scores the views the datamodule yields.
    """

    def __init__(
            self,
            backbone: str = DEFAULT_BACKBONE,
            head: Head = DEFAULT_HEAD,
            num_classes: int = 1000,
            width: float = 1.0,
            init: Init = "paper",
            levels: Sequence[int] = PAPER_LEVELS,
            dropout: float = 0.5,
            size_schedule: SizeSchedule = DEFAULT_SIZE_SCHEDULE,
            train_sizes: tuple[int, int] = TRAIN_SIZES,
            seed: int = 0,
            lr: float = 0.01,
            reference_batch: int = 128,
            momentum: float = 0.9,
            weight_decay: float = 5e-4,
            lr_schedule: LrSchedule = "plateau",
            plateau_patience: int = 5,
            plateau_threshold: float = 0.1,
            lr_drops: int = 2,
            milestones: Sequence[int] = (30, 60),
            pca_std: float = 0.1,
            channels_last: bool = False,
            compile: bool = False,
            pixel_statistics: PixelStatistics | None = None,
            test_views: TestViews = "tenview",
    ) -> None:
        super().__init__()
        # the statistics travel in the checkpoint as the input transform's buffers; the test protocol is the
        # datamodule's, given anew to every run, not a property of the trained network
        self.save_hyperparameters(ignore=["pixel_statistics", "test_views"])
        self.test_protocol = view_protocol(test_views)
        self.variant = variant_name(head, size_schedule)
        self.net = create(backbone, head=head, num_classes=num_classes, width=width, init=init, levels=levels,
                          dropout=dropout)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile(dynamic=False)  # in place: the state dict keeps its keys
        self.transform = InputTransform(pca_std, pixel_statistics or IMAGENET_PIXEL_STATISTICS)
        self.eval_sums = TopKErrorSums()
        self.test_topk = PerImageTopK()
        self.test_outcomes: list[ImageOutcome] | None = None
        """After a test, on global rank 0: what each test image got (the recorder writes them down)."""
        self.train_loss_sum = torch.zeros((), dtype=torch.float64)
        self._epoch_size = train_sizes[0]
        self._epoch_begun = -1
        self.train_time_s = 0.0
        self.train_images = 0
        self.epochs_completed = 0
        self.epoch_lr = lr
        self.lr_scheduler: LrScheduler | None = None
        self._restored_scheduler_state: dict[str, Any] | None = None
        self._epoch_started = 0.0
        self._last_batch_end = 0.0
        self._epoch_images = 0

    # ---- shared pieces ------------------------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        return run_name(self.hparams.backbone, self.variant, self.hparams.seed)

    def current_train_size(self) -> int:
        return train_size(self.hparams.size_schedule, self.current_epoch, self.hparams.seed,
                          tuple(self.hparams.train_sizes))

    def normalise(self, images: torch.Tensor, size: int | None = None, train: bool = False) -> torch.Tensor:
        """uint8 (N, 3, H, W) images -> the network's float input (resized, colour noise if training, mean off), in
        the weights' dtype (fp32 under autocast; bf16 / fp16 under Lightning's `bf16-true` / `16-true`)."""
        x = self.transform(images, size=size, train=train).to(self.net.fc6.weight.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward(self, images: torch.Tensor, size: int | None = None, train: bool = False) -> torch.Tensor:
        """uint8 (N, 3, H, W) images -> logits."""
        return self.net(self.normalise(images, size=size, train=train))

    def train_loss(self, images: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
        """Cross-entropy of a training batch of uint8 224 crops at input side `size` (resize and colour noise on)."""
        return F.cross_entropy(self(images, size=size, train=True), labels)

    # ---- training -----------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._begin_epoch()

    def _begin_epoch(self) -> None:
        # Every random draw of an epoch (dropout, colour noise) is a function of (seed, epoch, rank), so a run
        # resumed at an epoch boundary continues exactly as the uninterrupted run would.
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.current_epoch * 1_009 + self.global_rank)
        self.train_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch_images = 0
        self._epoch_size = self.current_train_size()
        self._epoch_started = time.perf_counter()
        self._epoch_begun = self.current_epoch

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self._epoch_begun != self.current_epoch:  # resumed mid-epoch: Lightning skips on_train_epoch_start
            self._begin_epoch()
        loss = self.train_loss(images, labels, self._epoch_size)
        self.train_loss_sum += loss.detach().double() * labels.numel()  # stays on the device: no sync per step
        self._epoch_images += labels.numel()
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        elapsed = max(self._last_batch_end - self._epoch_started, 0.0)  # training only, not validation
        sums = torch.stack([self.train_loss_sum, self.train_loss_sum.new_tensor(float(self._epoch_images))])
        loss_sum, count = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        images = self._epoch_images * self.trainer.world_size
        self.train_time_s += elapsed
        self.train_images += images
        self.epoch_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        # Reduced above, so every rank holds the same values: Lightning's sync with "max" keeps them as they are
        self.log_dict({TRAIN_EPOCH_LOSS: loss_sum / max(count, 1), TRAIN_SIZE: float(self._epoch_size),
                       LR: self.epoch_lr}, sync_dist=True, reduce_fx="max")
        # each rank timed its own part of the epoch: the slowest sets the pace of the whole
        self.log(TRAIN_IMAGES_PER_S, images / elapsed if elapsed > 0 else 0.0, sync_dist=True, reduce_fx="min")
        self.step_lr_schedule()

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.eval_sums.reset()

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.eval_sums.update(self(batch.views), batch.labels, batch.valid)

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val", "validate")

    def on_test_epoch_start(self) -> None:
        self.eval_sums.reset()
        self.test_topk.reset()
        self.test_outcomes = None

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        if self.test_protocol.feature_map_windows is None:
            probabilities = self.view_scores(batch.views)
        else:
            probabilities = self.feature_map_scores(batch.views[:, 0], self.test_protocol.name)
        self.eval_sums.update(probabilities, batch.labels, batch.valid)
        self.test_topk.update(probabilities, batch.labels, batch.valid, batch.keys)

    def view_scores(self, views: torch.Tensor) -> torch.Tensor:
        """Softmax averaged over the views of each image: uint8 (B, V, 3, H, W) -> (B, num_classes)."""
        batch_size, num_views = views.shape[:2]
        logits = self(views.flatten(0, 1))
        return logits.float().softmax(dim=1).view(batch_size, num_views, -1).mean(dim=1)

    def feature_map_scores(self, images: torch.Tensor, protocol: str = "tenview_fmap") -> torch.Tensor:
        """The protocol's windows pooled on the conv maps of uint8 (B, 3, H, W) images (tenview_fmap: the standard
        10 views of the s=256 images), softmax averaged: (B, num_classes)."""
        windows_of = view_protocol(protocol).feature_map_windows
        if windows_of is None:
            raise ValueError(f"test protocol {protocol!r} classifies views, not windows on the conv maps")
        windows = windows_of(images.shape[-1], images.shape[-2])
        return views_on_feature_maps(self.net, self.normalise(images), windows)

    def on_test_epoch_end(self) -> None:
        self._log_errors("test", "test")
        self.test_outcomes = self.test_topk.gathered()
        if self.test_outcomes is not None:
            check_unique(self.test_outcomes)

    def _log_errors(self, prefix: Literal["val", "test"], stage: str) -> None:
        top1, top5, count = self.eval_sums.totals(
            lambda sums: self.trainer.strategy.reduce(sums, reduce_op="sum"), device=self.device
        )
        if self.trainer.sanity_checking:
            return
        self._check_count(stage, count)
        # sums of all ranks already: the same values on every rank, which Lightning's sync with "max" keeps
        self.log_dict({top1_metric(prefix): top1, top5_metric(prefix): top5, images_metric(prefix): float(count)},
                      sync_dist=True, reduce_fx="max")

    def _check_count(self, stage: str, count: int) -> None:
        """Fail loudly if an evaluation did not see every image exactly once (unless batches were limited)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        limit = self.trainer.limit_val_batches if stage == "validate" else self.trainer.limit_test_batches
        if datamodule is None or limit not in (None, 1.0):
            return
        expected = datamodule.expected_count(stage)
        if count != expected:
            raise RuntimeError(
                f"{stage}: counted {count} images across all ranks but the manifest holds {expected}; "
                "an evaluation must see every image exactly once"
            )

    # ---- optimiser ----------------------------------------------------------------------------------------------
    def global_batch(self) -> int:
        per_device = self.trainer.datamodule.batch_size
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def sgd(self, global_batch: int) -> torch.optim.SGD:
        """The optimiser for `global_batch` images per step: lr scaled linearly from `reference_batch`."""
        hp = self.hparams
        params = list(self.parameters())
        # One fused kernel for the whole update on CUDA, instead of the multi-tensor (foreach) launches. Not with
        # gradient clipping: Lightning's mixed-precision plugin refuses to clip for an optimizer that steps with AMP
        # scaling, as fused SGD says it does.
        clipping = getattr(self._trainer, "gradient_clip_val", None) not in (None, 0, 0.0)
        fused = all(param.is_cuda for param in params) and not clipping
        return torch.optim.SGD(params, lr=hp.lr * global_batch / hp.reference_batch, momentum=hp.momentum,
                               weight_decay=hp.weight_decay, fused=fused or None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD; the LR schedule is stepped by this module (see `step_lr_schedule`), not by Lightning."""
        hp = self.hparams
        optimizer = self.sgd(self.global_batch())
        lr = optimizer.param_groups[0]["lr"]
        if hp.lr_schedule == "plateau":
            self.lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=0.1, patience=hp.plateau_patience, threshold=hp.plateau_threshold,
                threshold_mode="abs", min_lr=lr * 0.1 ** hp.lr_drops,
            )
        elif hp.lr_schedule == "milestones":
            self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.milestones),
                                                                     gamma=0.1)
        else:
            raise ValueError(f"unknown lr_schedule {hp.lr_schedule!r}: choose 'plateau' or 'milestones'")
        if self._restored_scheduler_state is not None:
            self.lr_scheduler.load_state_dict(self._restored_scheduler_state)
        return optimizer

    def step_lr_schedule(self) -> None:
        """Step the LR schedule at the end of the epoch, before the epoch's checkpoint is written.

        NOTE: Lightning steps epoch schedulers only after the end-of-epoch checkpoint has been saved, so a run
        resumed from it would miss one plateau observation per restart; stepping here keeps a resumed run identical
        to an uninterrupted one. Plateau steps only on epochs that validated.
        """
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            val_top1 = self.trainer.callback_metrics.get(MONITOR)
            if val_top1 is not None:
                self.lr_scheduler.step(float(val_top1))
        else:
            self.lr_scheduler.step()

    # ---- checkpoint ---------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spp_cls"] = {
            "train_time_s": self.train_time_s,
            "train_images": self.train_images,
            # `processed` already counts the epoch whose end saves this checkpoint; a mid-epoch (HPC) one does not
            "epochs_completed": self.trainer.fit_loop.epoch_progress.current.processed,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stats = checkpoint.get("spp_cls", {})
        self.train_time_s = stats.get("train_time_s", 0.0)
        self.train_images = stats.get("train_images", 0)
        self.epochs_completed = stats.get("epochs_completed", 0)
        self._restored_scheduler_state = stats.get("lr_scheduler")
