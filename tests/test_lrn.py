"""Within-channel LRN against Caffe's formula computed independently in float64."""
import pytest
import torch

from spp_cls.models import WithinChannelLRN


def caffe_within_channel_lrn(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """x * (1 + alpha / n^2 * sum of x^2 over the zero-padded n x n window)^(-beta), one pixel at a time."""
    n, c, h, w = x.shape
    half = size // 2
    out = torch.empty_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    total = 0.0
                    for di in range(-half, half + 1):
                        for dj in range(-half, half + 1):
                            if 0 <= i + di < h and 0 <= j + dj < w:
                                total += float(x[b, ch, i + di, j + dj]) ** 2
                    out[b, ch, i, j] = x[b, ch, i, j] * (1 + alpha / size**2 * total) ** (-beta)
    return out


@pytest.mark.parametrize("size,alpha,beta", [(3, 5e-5, 0.75), (5, 1e-2, 0.5)])
def test_matches_the_formula(size, alpha, beta):
    torch.manual_seed(0)
    # post-ReLU activations of a Gaussian-initialised net reach tens to hundreds: make the normaliser matter
    x = torch.rand(2, 3, 7, 6, dtype=torch.float64) * 300
    expected = caffe_within_channel_lrn(x, size, alpha, beta)
    got = WithinChannelLRN(size, alpha, beta)(x)
    assert not torch.allclose(got, x, rtol=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-9)


def test_even_window_is_refused():
    with pytest.raises(ValueError, match="odd"):
        WithinChannelLRN(size=4)
