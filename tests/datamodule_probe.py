"""A LightningModule that records what ShardDataModule feeds it, a script that runs it under real DDP, and the
helpers the datamodule tests share (content digests of samples, of the val set read straight from the tars, and of a
train epoch).

Used in-process by tests/test_datamodule.py and as a 2-process gloo run by tests/test_datamodule_ddp.py:

    python tests/datamodule_probe.py ROOT OUT --strategy ddp --workers 0 2 [--stages fit validate test]

Each rank writes ``OUT/{strategy}-w{workers}-{stage}-rank{r}.json``: per batch the content hash of every sample
(valid samples only in validation/test), the labels, the batch shape and dtype, and for training the epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch

from spp_cls.data.stream.datamodule import ShardDataModule
from spp_cls.data.stream.pipeline import decode_rgb
from spp_cls.data.stream.views import center_view, stacked_views


def sample_digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()[:16]


def val_digests(root: Path, protocol: str = "center") -> Counter[str]:
    """Digest of the views of every val image, read straight from the tar files (not through the datamodule)."""
    make_views = center_view if protocol == "center" else stacked_views(protocol)  # type: ignore[arg-type]
    digests: Counter[str] = Counter()
    for shard in sorted((root / "val").glob("val-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    image = decode_rgb(tar.extractfile(member).read())
                    digests[sample_digest(make_views(image))] += 1
    return digests


def train_digests(datamodule: ShardDataModule, epoch: int, rank: int, world_size: int) -> list[list[str]]:
    batches = []
    for images, labels in datamodule.train_loader(epoch, rank=rank, world_size=world_size):
        assert images.shape == (datamodule.batch_size, 3, 224, 224) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and labels.shape == (datamodule.batch_size,)
        batches.append([sample_digest(image) for image in images])
    return batches


def describe_batch(images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None,
                   keys: list[str] | None = None) -> dict:
    keep = range(len(labels)) if valid is None else [i for i in range(len(labels)) if valid[i]]
    return {
        "digests": [sample_digest(images[i]) for i in keep],
        "keys": None if keys is None else [keys[i] for i in keep],
        "labels": [int(labels[i]) for i in keep],
        "shape": list(images.shape),
        "dtypes": [str(images.dtype), str(labels.dtype), None if valid is None else str(valid.dtype)],
        "size": len(labels),
    }


class RecordingModule(pl.LightningModule):
    """Trains nothing (lr 0); records every batch. ``out`` set: each rank dumps its records at the end of a stage."""

    def __init__(self, out: str | None = None, tag: str = "") -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out, self.tag = out, tag
        self.records: dict[str, list[dict]] = {"train": [], "validate": [], "test": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.records["train"].append({"epoch": self.current_epoch, **describe_batch(images, labels)})
        return self.weight.sum() * images.float().mean()

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        if self.trainer.state.fn == "validate":  # not the validation passes inside fit
            self.records["validate"].append(describe_batch(*batch))

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.records["test"].append(describe_batch(*batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def _dump(self, stage: str) -> None:
        if self.out is not None:
            path = Path(self.out) / f"{self.tag}-{stage}-rank{self.global_rank}.json"
            path.write_text(json.dumps({"world_size": self.trainer.world_size, "batches": self.records[stage]}))

    def on_train_end(self) -> None:
        self._dump("train")

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate":
            self._dump("validate")

    def on_test_end(self) -> None:
        self._dump("test")


def make_trainer(strategy: str = "auto", devices: int = 1, max_epochs: int = 2, reload_every: int = 1) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_epochs=max_epochs,
        reload_dataloaders_every_n_epochs=reload_every, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )


def run(root: str, out: str, strategy: str, workers: int, stages: list[str]) -> None:
    """``stages`` of: fit (2 epochs), validate, test (10-view), on 2 CPU ranks; every rank dumps what it saw."""
    tag = f"{strategy}-w{workers}"
    datamodule = ShardDataModule(root, batch_size=4, num_workers=workers, shuffle_buffer=8, eval_batch_size=3,
                                 test_views="tenview", seed=3)
    trainer = make_trainer(strategy, devices=2)
    module = RecordingModule(out, tag)
    for stage in stages:
        getattr(trainer, stage)(module, datamodule=datamodule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--stages", nargs="+", choices=["fit", "validate", "test"], default=["fit", "validate", "test"])
    args = parser.parse_args()
    for workers in args.workers:
        run(args.root, args.out, args.strategy, workers, args.stages)


if __name__ == "__main__":
    main()
