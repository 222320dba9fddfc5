"""The speed paths only CUDA takes: the one-op LRN under CUDA autocast (whose fp32 list holds `pow`), fused SGD.

Skipped where no CUDA device is present; run on a GPU node with ``pytest -m cuda``.
"""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import LAYOUTS, SETTINGS, assert_close_to, first_lrn_input, reference_and_gradient

from spp_cls.train.module import SppClassifier

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("mode", list(SETTINGS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_lrn_under_cuda_bf16_autocast_returns_bf16_and_equals_the_formula(imagenet_folder, mode, layout):
    module = SETTINGS[mode][0]
    x = first_lrn_input(imagenet_folder, mode, layout).to("cuda", torch.bfloat16).requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = module(x)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    assert out.dtype == grad_x.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=LAYOUTS[layout])
    expected, expected_grad = reference_and_gradient(x.cpu(), grad.cpu(), mode)
    assert_close_to(out.cpu(), expected, 1e-2)
    assert_close_to(grad_x.cpu(), expected_grad, 1e-2)


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_lrn_in_fp32_on_cuda_equals_the_formula(imagenet_folder, mode):
    module = SETTINGS[mode][0]
    x = first_lrn_input(imagenet_folder, mode, "channels_last").cuda().requires_grad_()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).cuda()
    out = module(x)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    expected, expected_grad = reference_and_gradient(x.cpu(), grad.cpu(), mode)
    assert_close_to(out.cpu(), expected, 1e-5)
    assert_close_to(grad_x.cpu(), expected_grad, 1e-5)


def test_sgd_is_fused_on_cuda_and_steps_as_the_foreach_sgd():
    torch.manual_seed(0)
    module = SppClassifier("zf5", width=0.125, num_classes=10).cuda()
    reference = copy.deepcopy(module)
    fused = module.sgd(128)
    assert fused.defaults["fused"] is True
    hp = reference.hparams
    foreach = torch.optim.SGD(reference.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              foreach=True)
    images = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (4,), device="cuda")
    for _ in range(3):  # the same gradients for both optimisers: only the update differs
        fused.zero_grad(set_to_none=True)
        module.train_loss(images, labels, 224).backward()
        for param, twin in zip(module.parameters(), reference.parameters(), strict=True):
            twin.grad = param.grad.clone()
        fused.step()
        foreach.step()
    for got, expected in zip(module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
