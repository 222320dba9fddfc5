"""FLOPs per image of a network, counted on the meta device."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..models import create
from .settings import NUM_CLASSES, ModelSpec


def count_flops(spec: ModelSpec, width: float, size: int, num_classes: int = NUM_CLASSES) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs per image at `size`, counted on the meta device (no compute).

    The backward omits the input gradient of the first layer, as in training, so it is a little under 2x forward.
    Raises ValueError when the network does not take `size` (a no-SPP net at 180, too small an input).
    """
    with torch.device("meta"):
        net = create(spec.backbone, spec.head, num_classes=num_classes, width=width)
        images = torch.empty(1, 3, size, size)
        labels = torch.zeros(1, dtype=torch.int64)
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(net(images), labels)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), forward.get_total_flops() + backward.get_total_flops()
