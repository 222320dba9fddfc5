"""Weight initialisation schemes.

`paper`: what the authors' released ZF-5 model uses (and AlexNet): every conv and fc weight from N(0, 0.01); biases 1
for conv2, conv4, conv5 and the fc layers, 0 elsewhere (also 0 for Overfeat-7's conv6/conv7, which the released model
does not have). `kaiming`: He-normal convs (fan_out, ReLU) with zero bias and N(0, 0.01) fc layers with zero bias, as
torchvision's VGG; it trains the deep no-BN trunks faster and is what the CPU demo uses.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

Init = Literal["paper", "kaiming"]
PAPER_STD = 0.01
PAPER_UNIT_BIAS_CONVS = ("conv2", "conv4", "conv5")


def init_trunk(trunk: nn.Module, scheme: Init) -> None:
    """Initialise the convs of a paper trunk whose layers are named conv1, conv2, ..."""
    for name, module in trunk.named_children():
        if not isinstance(module, nn.Conv2d):
            continue
        if scheme == "paper":
            nn.init.normal_(module.weight, 0.0, PAPER_STD)
            nn.init.constant_(module.bias, 1.0 if name in PAPER_UNIT_BIAS_CONVS else 0.0)
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        else:
            raise ValueError(f"unknown init {scheme!r}: choose 'paper' or 'kaiming'")


def init_head(linears: list[nn.Linear], scheme: Init) -> None:
    """Initialise fc6, fc7, fc8."""
    if scheme not in ("paper", "kaiming"):
        raise ValueError(f"unknown init {scheme!r}: choose 'paper' or 'kaiming'")
    for linear in linears:
        nn.init.normal_(linear.weight, 0.0, PAPER_STD)
        nn.init.constant_(linear.bias, 1.0 if scheme == "paper" else 0.0)
