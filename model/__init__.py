"""The person-segmentation model: U-Net definition, checkpoints and the batched Segmenter.

Knows nothing of manifests, storage or Ray.
"""
from .unet import UNet, UNetConfig, build_unet
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, default_weights_path
from .segmenter import Segmenter, SegmentResult

__all__ = [
    "UNet", "UNetConfig", "build_unet",
    "CheckpointError", "load_checkpoint", "save_checkpoint", "default_weights_path",
    "Segmenter", "SegmentResult",
]
