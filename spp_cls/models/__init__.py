"""SPP-net models: the pyramid, the four paper trunks, the SPP / no-SPP heads and the registry."""
from .backbones import TRUNKS, conv_map_size, feature_map_geometry, map_sizes, min_input_size, total_stride
from .lrn import CrossChannelLRN, WithinChannelLRN
from .net import SppNet, WindowPool2d
from .registry import MODEL_CFGS, SppModelCfg, create, default_cfg, list_models
from .spp import PAPER_LEVELS, SpatialPyramidPool2d, spatial_pyramid_pool2d

__all__ = [
    "MODEL_CFGS", "PAPER_LEVELS", "TRUNKS", "CrossChannelLRN", "SpatialPyramidPool2d", "SppModelCfg", "SppNet",
    "WindowPool2d", "WithinChannelLRN", "conv_map_size", "create", "default_cfg", "feature_map_geometry", "list_models",
    "map_sizes", "min_input_size", "spatial_pyramid_pool2d", "total_stride",
]
