"""Batched inference: uint8 RGB frames of any sizes in, person masks at the original sizes out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint
from .preprocess import Normalise, autocast, letterbox_batch
from .unet import UNet

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class SegmentResult:
    mask: np.ndarray                 # HxW uint8, 0 = background, 255 = person
    person_fraction: float
    bbox: tuple[int, int, int, int] | None   # x0, y0, x1, y1 (exclusive) of person pixels
    confidence: float                # mean of max(p, 1-p): 1.0 = every pixel decided


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16/AMX); elsewhere bf16 on CPU is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map 'auto' to the fastest safe choice for the device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def finish_mask(prob: np.ndarray, size: tuple[int, int], shape: tuple[int, int], threshold: float) -> SegmentResult:
    """From a model-resolution probability map (uint8) to a thresholded mask at the frame's size."""
    h, w = shape
    ch, cw = size
    small = prob[:ch, :cw]
    full = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    # prob is an integer 0..255: "> threshold*255" is "> floor(threshold*255)"
    _, mask = cv2.threshold(full, float(np.floor(threshold * 255.0)), 255, cv2.THRESH_BINARY)
    count = cv2.countNonZero(mask)
    bbox = None
    if count:
        x, y, bw, bh = cv2.boundingRect(mask)
        bbox = (int(x), int(y), int(x + bw), int(y + bh))
    conf = float(np.abs(small.astype(np.float32) - 127.5).mean() / 255.0 + 0.5)
    return SegmentResult(mask=mask, person_fraction=count / float(h * w), bbox=bbox, confidence=conf)


class Segmenter:
    """Holds one model on one device; call `segment(frames)` with any number of frames."""

    def __init__(self, model: UNet, *, device: str = "auto", precision: str = "auto",
                 batch_size: int = 16, threshold: float | None = None, weights_sha256: str = "",
                 compile: bool = False):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.config = model.config
        self.batch_size = max(1, int(batch_size))
        self.threshold = float(threshold if threshold is not None else model.config.threshold)
        self.weights_sha256 = weights_sha256
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        if compile:
            self.model = torch.compile(self.model)
        self.normalise = Normalise(self.config, self.device)
        pin = self.device.type == "cuda"
        shape = (self.batch_size, self.config.input_height, self.config.input_width, 3)
        self._host = torch.zeros(shape, dtype=torch.uint8, pin_memory=pin)

    @classmethod
    def from_checkpoint(cls, path: str | None = None, **kwargs) -> "Segmenter":
        model, info = load_checkpoint(path, kwargs.get("device"))
        return cls(model, weights_sha256=info["sha256"], **kwargs)

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Person probability (uint8, 0..255) for letterboxed uint8 frames (N x H x W x 3, any N)."""
        outs = []
        for start in range(0, len(batch), self.batch_size):
            part = batch[start:start + self.batch_size]
            self._host[: len(part)].numpy()[:] = part
            outs.append(self._infer_host(len(part)))
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    @torch.inference_mode()
    def _infer_host(self, n: int) -> np.ndarray:
        x = self.normalise(self._host[:n])
        with autocast(self.device, self.precision):
            logits = self.model(x)
        prob = torch.sigmoid(logits.float())[:, 0].mul_(255.0).round_().to(torch.uint8)
        return prob.cpu().numpy()

    def segment(self, frames: Sequence[np.ndarray]) -> list[SegmentResult]:
        """Segment any number of HxWx3 uint8 RGB frames, in batches of batch_size."""
        out: list[SegmentResult] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            _, sizes = letterbox_batch(chunk, self.config.input_height, self.config.input_width,
                                       out=self._host.numpy())
            probs = self._infer_host(len(chunk))
            out.extend(finish_mask(p, s, f.shape[:2], self.threshold) for f, p, s in zip(chunk, probs, sizes))
        return out
