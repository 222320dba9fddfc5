"""spp-cls: a harness that reproduces the SPP-net ImageNet classification comparison."""

__version__ = "0.1.0"
