"""Exact top-k error under DDP: sums of correct predictions and counts, reduced across ranks, never means of means;
and the per-image outcomes of a test, gathered from all ranks."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..outcomes import ImageOutcome


class TopKErrorSums:
    """Accumulates (top-1 correct, top-5 correct, counted) over the valid samples of each batch, on the device."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None

    def update(self, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        k = min(5, scores.shape[1])
        top = scores.topk(k, dim=1).indices
        hits = top == labels[:, None]
        mask = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.bool()
        batch = torch.stack([
            (hits[:, 0] & mask).sum(),
            (hits.any(dim=1) & mask).sum(),
            mask.sum(),
        ]).to(torch.float64)
        self.sums = batch if self.sums is None else self.sums + batch

    def reset(self) -> None:
        self.sums = None

    def totals(
            self,
            reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
            device: torch.device | str = "cpu",
    ) -> tuple[float, float, int]:
        """(top-1 error %, top-5 error %, count) after `reduce_sum` adds the sums of all ranks."""
        sums = self.sums if self.sums is not None else torch.zeros(3, dtype=torch.float64, device=device)
        correct1, correct5, count = reduce_sum(sums).tolist()
        if count == 0:
            return float("nan"), float("nan"), 0
        return 100.0 * (1 - correct1 / count), 100.0 * (1 - correct5 / count), int(count)


class PerImageTopK:
    """Keeps, for every valid test image of this rank, its key, label and top-5 classes: on the device while the
    test runs (no host sync per batch), gathered to global rank 0 at the end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.keys: list[str] = []
        self.labels: list[torch.Tensor] = []
        self.top: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []

    def update(self, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, keys: list[str]) -> None:
        self.keys += keys
        self.labels.append(labels)
        self.top.append(scores.topk(min(5, scores.shape[1]), dim=1).indices)
        self.valid.append(valid)

    def outcomes(self) -> list[ImageOutcome]:
        """This rank's outcomes (one host copy of everything kept)."""
        if not self.keys:
            return []
        valid = torch.cat(self.valid).bool().cpu().tolist()
        labels = torch.cat(self.labels).cpu().tolist()
        top = torch.cat(self.top).cpu().tolist()
        return [ImageOutcome(key, label, tuple(classes))
                for key, label, classes, keep in zip(self.keys, labels, top, valid) if keep]

    def gathered(self) -> list[ImageOutcome] | None:
        """All ranks' outcomes on global rank 0, None on the other ranks (every rank must call this)."""
        mine = self.outcomes()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return mine
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        parts: list[list[ImageOutcome]] | None = [[] for _ in range(world_size)] if rank == 0 else None
        torch.distributed.gather_object(mine, parts, dst=0)
        return [outcome for part in parts for outcome in part] if parts is not None else None
