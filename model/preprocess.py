"""What a frame goes through on its way into the model, written once for training and inference:
the letterbox (size rule and resampling), normalisation and autocast.

Training feeds the model exactly as the Segmenter does, so a rule changed here changes both.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from .unet import UNetConfig


def content_size(h: int, w: int, H: int, W: int) -> tuple[int, int]:
    """Size of an h x w frame scaled to fit an H x W letterbox, keeping its aspect."""
    scale = min(H / h, W / w)
    return max(1, min(H, round(h * scale))), max(1, min(W, round(w * scale)))


def letterbox_into(dst: np.ndarray, frame: np.ndarray) -> tuple[int, int]:
    """Resize `frame` into the top-left of `dst` (HxWx3, zero elsewhere), keeping aspect; return the content size.
    A frame already at its content size (scaled by the decoder) is copied as is."""
    H, W = dst.shape[:2]
    h, w = frame.shape[:2]
    ch, cw = content_size(h, w, H, W)
    dst[ch:] = 0
    dst[:ch, cw:] = 0
    if (ch, cw) == (h, w):
        dst[:ch, :cw] = frame
    else:
        interp = cv2.INTER_AREA if ch < h else cv2.INTER_LINEAR
        dst[:ch, :cw] = cv2.resize(frame, (cw, ch), interpolation=interp)
    return ch, cw


def letterbox_batch(frames: Sequence[np.ndarray], H: int, W: int,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Frames of any sizes letterboxed into one N x H x W x 3 uint8 batch (the first N rows of `out` when
    given, e.g. a pinned host buffer); returns the batch and each frame's content size."""
    batch = np.empty((len(frames), H, W, 3), np.uint8) if out is None else out[: len(frames)]
    return batch, [letterbox_into(batch[k], f) for k, f in enumerate(frames)]


class Normalise:
    """uint8 NHWC frames -> float NCHW on the device, scaled by the model's mean/std, in channels_last
    (NHWC storage is channels_last NCHW already, so the permute copies nothing)."""

    def __init__(self, config: UNetConfig, device: torch.device):
        self.mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(config.std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device, precision: str):
    """The context the model runs in: nothing for fp32, torch.autocast to bf16 or fp16 otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
