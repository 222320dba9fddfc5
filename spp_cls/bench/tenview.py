"""The 10-view test: image crops against windows on the conv maps."""
from __future__ import annotations

from typing import Any

import torch

from ..data.stream.views import ten_views
from ..train.module import SppClassifier
from ..view_protocols import TEST_SHORTER_SIDE
from .device import autocast
from .settings import NUM_CLASSES, Batch, BenchSettings, ModelSpec
from .timing import cycle, timed_steps

TENVIEW_IMAGE_WIDTH = 341
"""The 10-view test image is 256 x 341 (a 4:3 image at s=256)."""


def tenview_speed(spec: ModelSpec, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Test images/s of the 10 crops (one batch of views, as the test loader gives) against `tenview_fmap`."""
    module = SppClassifier(spec.backbone, spec.head, num_classes=NUM_CLASSES, width=settings.width,
                           channels_last=settings.channels_last).to(device).eval()
    per_batch = max(1, settings.batch_size // 10)  # the datamodule's test batch for 10 views
    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (per_batch, 3, TEST_SHORTER_SIDE, TENVIEW_IMAGE_WIDTH), dtype=torch.uint8,
                           generator=generator).to(device)
    views = torch.stack([ten_views(image) for image in images])
    labels = torch.zeros(per_batch, dtype=torch.int64, device=device)

    def crops(batch: Batch) -> int:
        module.view_scores(batch[0])
        return len(batch[0])

    def feature_maps(batch: Batch) -> int:
        for image in batch[0]:
            module.feature_map_scores(image[None])
        return len(batch[0])

    warmup = max(1, settings.warmup)
    with torch.inference_mode(), autocast(device, settings.precision):
        crop_timing = timed_steps(crops, cycle([(views, labels)]), warmup, settings.steps, device)
        fmap_timing = timed_steps(feature_maps, cycle([(images, labels)]), warmup, settings.steps, device)
    return {"model": spec.name, "images": crop_timing.images, "crops_images_per_s": crop_timing.images_per_s,
            "fmap_images_per_s": fmap_timing.images_per_s,
            "fmap_speedup": fmap_timing.images_per_s / crop_timing.images_per_s}
