"""Both LRN ops against Caffe's formulas computed independently in float64: forward and input gradient, in fp32 and
under bf16 autocast, NCHW and channels_last, at the activation scale a real image (0-255 minus the mean) gives."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from helpers import (
    LAYOUTS,
    SETTINGS,
    assert_close_to,
    caffe_lrn,
    caffe_lrn_loops,
    first_lrn_input,
    reference_and_gradient,
)

from spp_cls.models import CrossChannelLRN, WithinChannelLRN
from spp_cls.models.lrn import local_response_norm


# (mode, module, size, alpha, beta, k): the trunks' settings (ZF-5 within-channel; AlexNet cross-channel)
@pytest.fixture(scope="module", params=["within", "cross"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


# ---- tests -----------------------------------------------------------------------------------------------------------
def test_the_vectorised_reference_is_caffes_formula(mode):
    torch.manual_seed(0)
    x = torch.rand(2, 7, 6, 5, dtype=torch.float64) * 300
    _, size, alpha, beta, k = SETTINGS[mode]
    torch.testing.assert_close(caffe_lrn(x, mode, size, alpha, beta, k), caffe_lrn_loops(x, mode, size, alpha, beta, k),
                               rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mode,size,alpha,beta,k", [("within", 3, 5e-5, 0.75, 1.0), ("within", 5, 1e-2, 0.5, 1.0),
                                                   ("cross", 5, 1e-4, 0.75, 2.0), ("cross", 3, 1e-2, 0.5, 1.5)])
def test_float64_maps_are_computed_in_float64(mode, size, alpha, beta, k):
    torch.manual_seed(0)
    # post-ReLU activations of a Gaussian-initialised net reach tens to hundreds: make the normaliser matter
    x = torch.rand(2, 6, 7, 6, dtype=torch.float64) * 300
    module = WithinChannelLRN(size, alpha, beta) if mode == "within" else CrossChannelLRN(size, alpha, beta, k)
    got = module(x)
    assert got.dtype == torch.float64 and not torch.allclose(got, x, rtol=1e-3)
    torch.testing.assert_close(got, caffe_lrn_loops(x, mode, size, alpha, beta, k), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fp32_forward_and_gradient_equal_the_float64_formula(imagenet_folder, mode, layout):
    module = SETTINGS[mode][0]
    x = first_lrn_input(imagenet_folder, mode, layout).requires_grad_()
    assert 20 < x.max() < 2000  # the scale of real activations, where the normaliser is far from 1
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=LAYOUTS[layout])
    out = module(x)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    expected, expected_grad = reference_and_gradient(x, grad, mode)
    assert not torch.allclose(expected, x.double() / SETTINGS[mode][4] ** 0.75, rtol=1e-2)
    assert out.dtype == grad_x.dtype == torch.float32
    assert out.is_contiguous(memory_format=LAYOUTS[layout]) and grad_x.is_contiguous(memory_format=LAYOUTS[layout])
    assert_close_to(out, expected, 1e-5)
    assert_close_to(grad_x, expected_grad, 1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_under_bf16_autocast_the_op_returns_bf16_and_equals_the_formula(imagenet_folder, mode, layout):
    module = SETTINGS[mode][0]
    x = first_lrn_input(imagenet_folder, mode, layout, autocast=True).requires_grad_()
    assert x.dtype == torch.bfloat16
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
        pooled = F.max_pool2d(out, 3, 2)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    assert out.dtype == pooled.dtype == grad_x.dtype == torch.bfloat16  # the pool after it runs in bf16 too
    expected, expected_grad = reference_and_gradient(x, grad, mode)
    assert_close_to(out, expected, 1e-2)
    assert_close_to(grad_x, expected_grad, 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_keeps_only_the_input(mode, dtype):
    x = (torch.rand(2, 8, 9, 9) * 300).to(dtype).requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        SETTINGS[mode][0](x)
    assert len(saved) == 1 and saved[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_cross_channel_fp32_forward_is_torchs_local_response_norm_bit_for_bit():
    x = torch.rand(2, 16, 9, 7) * 300
    for layout in LAYOUTS.values():
        x = x.contiguous(memory_format=layout)
        assert torch.equal(CrossChannelLRN()(x), torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x))


@pytest.mark.slow
def test_compiled_op_equals_eager_in_forward_and_backward(mode):
    torch._dynamo.reset()
    _, size, alpha, beta, k = SETTINGS[mode]
    x = (torch.rand(2, 8, 15, 15) * 300).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(x.shape)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return local_response_norm(t, mode, size, alpha, beta, k)

    compiled = torch.compile(norm, fullgraph=True, dynamic=False)  # fullgraph: no graph break around the op
    (eager_grad,) = torch.autograd.grad(norm(x), x, grad)
    out = compiled(x)
    (compiled_grad,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(out, norm(x), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [WithinChannelLRN, CrossChannelLRN])
def test_even_window_is_refused(module):
    with pytest.raises(ValueError, match="odd window size"):
        module(size=4)


def test_a_map_that_is_not_4d_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        CrossChannelLRN()(torch.ones(3, 8, 8))
