"""Exact top-k error under DDP: sums of correct predictions and counts, reduced across ranks, never means of means."""
from __future__ import annotations

from collections.abc import Callable

import torch


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
