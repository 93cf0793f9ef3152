"""Turning labelled images into fixed-size training pairs: letterbox, geometric and colour
augmentation, and synthetic composites (cut-out people pasted onto backgrounds).

Every random choice comes from a generator seeded by (seed, epoch, index), so a sample is the
same whichever worker makes it and whether or not training was interrupted and resumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .data import UNKNOWN, SampleSet
from .preprocess import letterbox_into


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5                       # probability of a horizontal flip
    zoom: tuple[float, float] = (0.6, 1.6)  # relative to the letterbox fit; > 1 crops
    rotate: float = 12.0                    # max degrees either way
    shift: float = 0.15                     # max translation as a fraction of the input size
    colour: float = 0.3                     # strength of brightness/contrast/saturation/hue jitter
    blur: float = 0.25                      # probability of a Gaussian blur
    noise: float = 0.25                     # probability of Gaussian pixel noise
    grey: float = 0.05                      # probability of a greyscale image
    composite_people: tuple[int, int] = (1, 3)
    # probability of permuting the RGB channels: keeps a student from learning "red shirt = person"
    # when the people in its data are few
    channel_swap: float = 0.0
    # person-free distractors per composite: blobs cut from another background, recoloured, pasted
    # under the people with mask 0 (bright, person-sized things that are not people)
    distractors: tuple[int, int] = (0, 0)
    # height of a pasted whole figure relative to the canvas (log-uniform): a low end of 0.05 makes the
    # small background people of everyday photos
    person_scale: tuple[float, float] = (0.12, 1.3)

    def __post_init__(self) -> None:
        if not 0.0 <= self.channel_swap <= 1.0:
            raise ValueError("channel_swap is a probability in [0, 1]")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError("distractors must be (low, high) with 0 <= low <= high")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _planes(label: np.ndarray) -> np.ndarray:
    """0/1/UNKNOWN labels -> two 0/255 planes (person, unknown) that resize and warp like images."""
    return np.dstack([np.where(label == 1, 255, 0), np.where(label == UNKNOWN, 255, 0)]).astype(np.uint8)


def _label(planes: np.ndarray) -> np.ndarray:
    """Back from `_planes` after resampling: person where its plane is over half, else unknown likewise."""
    out = (planes[..., 0] > 127).astype(np.uint8)
    out[(planes[..., 1] > 127) & (out == 0)] = UNKNOWN
    return out


def letterbox(image: np.ndarray, mask: np.ndarray | None, H: int, W: int):
    """Top-left letterbox into a zero canvas, as the Segmenter feeds the model (its own function)."""
    img = np.zeros((H, W, 3), np.uint8)
    ch, cw = letterbox_into(img, image)
    if mask is None:
        return img, None
    m = np.zeros((H, W), np.uint8)
    m[:ch, :cw] = _label(cv2.resize(_planes(mask), (cw, ch), interpolation=cv2.INTER_LINEAR))
    return img, m


def _geometric(image, mask, H, W, rng, cfg: AugmentConfig):
    h, w = image.shape[:2]
    scale = min(H / h, W / w) * rng.uniform(*cfg.zoom)
    if scale < 1:  # shrink with area averaging first, like the Segmenter, then warp at scale 1
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        planes = cv2.resize(_planes(mask), (nw, nh), interpolation=cv2.INTER_AREA)
        h, w, scale = nh, nw, 1.0
    else:
        planes = _planes(mask)
    angle = rng.uniform(-cfg.rotate, cfg.rotate)
    if rng.random() < 0.5:   # the Segmenter's layout: content at the top-left
        cx, cy = w * scale / 2, h * scale / 2
    else:
        cx, cy = W / 2, H / 2
    cx += rng.uniform(-cfg.shift, cfg.shift) * W
    cy += rng.uniform(-cfg.shift, cfg.shift) * H
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += cx - w / 2     # move the source centre (a fixed point of m) to (cx, cy)
    m[1, 2] += cy - h / 2
    border = cv2.BORDER_CONSTANT if rng.random() < 0.6 else cv2.BORDER_REFLECT_101
    img = cv2.warpAffine(image, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=(0, 0, 0))
    msk = _label(cv2.warpAffine(planes, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=0))
    if rng.random() < cfg.flip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(msk, dtype=np.uint8)


def _photometric(img: np.ndarray, rng, cfg: AugmentConfig) -> np.ndarray:
    x = img.astype(np.float32)
    s = cfg.colour
    if s > 0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20) * s) % 256
        hsv[..., 1] *= 1 + rng.uniform(-s, s) * 1.5
        x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        mean = x.mean()
        x = (x - mean) * (1 + rng.uniform(-s, s)) + mean * (1 + rng.uniform(-s, s))
        x *= 1 + rng.uniform(-s / 3, s / 3, size=3).astype(np.float32)   # white balance
    if cfg.channel_swap and rng.random() < cfg.channel_swap:   # no draw when off: streams stay as before
        x = np.ascontiguousarray(x[..., rng.permutation(3)])
    if rng.random() < cfg.grey:
        x[:] = x.mean(axis=2, keepdims=True)
    if rng.random() < cfg.blur:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.6))
    if rng.random() < cfg.noise:
        x += rng.normal(0, rng.uniform(2, 10), size=x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, mask: np.ndarray, H: int, W: int, rng: np.random.Generator,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One random training pair of size HxW from a labelled image."""
    img, msk = _geometric(image, mask, H, W, rng, cfg)
    return _photometric(img, rng, cfg), msk


def cut_edges(alpha: np.ndarray) -> tuple[bool, bool, bool, bool]:
    """Which sides (top, bottom, left, right) of a cut-out the person is cut by: alpha reaches the edge."""
    return (alpha[0].max() > 127, alpha[-1].max() > 127, alpha[:, 0].max() > 127, alpha[:, -1].max() > 127)


def _placement(edges, ph: int, pw: int, H: int, W: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner for a pasted person: a cut side goes to the same side of the canvas (a close-up
    stays cropped where the photo cropped it); a whole figure stands anywhere, large ones near the bottom."""
    top, bottom, left, right = edges
    if left or right:
        x0 = 0 if left and not right else W - pw if right and not left else (W - pw) // 2
    else:
        x0 = int(rng.integers(-pw // 3, max(1, W - 2 * pw // 3)))
    if bottom:
        y0 = H - ph
    elif top:
        y0 = 0
    else:
        y0 = int(H - ph * rng.uniform(0.85, 1.0)) if ph > 0.6 * H else int(rng.integers(0, max(1, H - ph // 2)))
    return x0, y0


def _distractor(canvas: np.ndarray, source: np.ndarray, rng: np.random.Generator) -> None:
    """Paste a soft-edged random blob (ellipse or polygon) cut from `source`, hue-rotated, onto `canvas`."""
    H, W = canvas.shape[:2]
    bh, bw = int(H * rng.uniform(0.15, 0.7)), int(W * rng.uniform(0.08, 0.4))
    sh, sw = source.shape[:2]
    y, x = int(rng.integers(0, max(1, sh - bh))), int(rng.integers(0, max(1, sw - bw)))
    patch = cv2.resize(source[y:y + bh, x:x + bw], (bw, bh))
    hsv = cv2.cvtColor(patch, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(256))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * rng.uniform(1.0, 2.5), 0, 255).astype(np.uint8)
    patch = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    alpha = np.zeros((bh, bw), np.float32)
    if rng.random() < 0.5:
        cv2.ellipse(alpha, (bw // 2, bh // 2), (bw // 2, bh // 2), 0, 0, 360, 1.0, -1)
    else:
        pts = np.stack([rng.uniform(0, bw, 7), rng.uniform(0, bh, 7)], 1).astype(np.int32)
        cv2.fillPoly(alpha, [cv2.convexHull(pts)], 1.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)[..., None]
    y0, x0 = int(rng.integers(0, max(1, H - bh))), int(rng.integers(0, max(1, W - bw)))
    region = canvas[y0:y0 + bh, x0:x0 + bw]          # bh <= 0.7 H and bw <= 0.4 W: always whole
    region[:] = region * (1 - alpha) + patch * alpha


def composite(background: np.ndarray, cutouts: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
              cfg: AugmentConfig, others: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste 1..n random cut-out people onto a background; later ones occlude earlier ones. With
    `cfg.distractors`, first paste person-free blobs cut from `others` (default: the background itself)."""
    canvas = background.astype(np.float32)
    H, W = canvas.shape[:2]
    mask = np.zeros((H, W), np.float32)
    for _ in range(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1) if cfg.distractors[1] else 0):
        _distractor(canvas, others[rng.integers(len(others))] if others else background, rng)
    for _ in range(rng.integers(cfg.composite_people[0], cfg.composite_people[1] + 1)):
        rgb, alpha = cutouts[rng.integers(len(cutouts))]
        edges = cut_edges(alpha)
        # whole figures from far away to near; cropped close-ups fill 45-110% of the height
        lo, hi = (0.45, 1.1) if any(edges) else cfg.person_scale
        s = H * math.exp(rng.uniform(math.log(lo), math.log(hi))) / rgb.shape[0]
        ph, pw = max(2, round(rgb.shape[0] * s)), max(2, round(rgb.shape[1] * s))
        if pw > 2 * W:
            continue
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        p = cv2.resize(rgb, (pw, ph), interpolation=interp).astype(np.float32)
        a = cv2.resize(alpha, (pw, ph), interpolation=interp).astype(np.float32) / 255.0
        if rng.random() < 0.5:
            p, a = p[:, ::-1], a[:, ::-1]
            edges = (edges[0], edges[1], edges[3], edges[2])
        p = p * (1 + rng.uniform(-0.2, 0.2)) + rng.uniform(-15, 15)   # rough colour harmonisation
        x0, y0 = _placement(edges, ph, pw, H, W, rng)
        ys, xs = slice(max(0, y0), min(H, y0 + ph)), slice(max(0, x0), min(W, x0 + pw))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        py, px = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        aa = a[py, px][..., None]
        canvas[ys, xs] = canvas[ys, xs] * (1 - aa) + p[py, px] * aa
        mask[ys, xs] = np.maximum(mask[ys, xs] * (1 - aa[..., 0]), aa[..., 0])
    return np.clip(canvas, 0, 255).astype(np.uint8), (mask > 0.5).astype(np.uint8)


class TrainingSet(torch.utils.data.Dataset):
    """Augmented scenes followed by `composites` synthetic composites per epoch.

    Item `epoch * len(self) + i` is sample i of that epoch, so workers need no shared epoch counter
    (they can persist across epochs) and a sample depends only on (seed, epoch, i)."""

    def __init__(self, samples: SampleSet, H: int, W: int, cfg: AugmentConfig, seed: int, composites: int = 0):
        self.samples, self.H, self.W, self.cfg, self.seed = samples, H, W, cfg, seed
        self.composites = composites if samples.cutouts and samples.backgrounds else 0

    def __len__(self) -> int:
        return len(self.samples) + self.composites

    def __getitem__(self, item: int):
        epoch, index = divmod(int(item), len(self))
        rng = sample_rng(self.seed, epoch, index)
        if index < len(self.samples):
            image, mask = self.samples.images[index], self.samples.masks[index]
        else:
            bg = self.samples.backgrounds[rng.integers(len(self.samples.backgrounds))]
            image, mask = composite(bg, self.samples.cutouts, rng, self.cfg, self.samples.backgrounds)
        img, msk = augment(image, mask, self.H, self.W, rng, self.cfg)
        return torch.from_numpy(img), torch.from_numpy(msk)


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, yielding TrainingSet items of the current epoch."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        return iter((self.epoch * self.size + order).tolist())


def letterboxed_arrays(samples: SampleSet, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All scenes letterboxed, as (N,H,W,3) uint8 images and (N,H,W) uint8 masks, for validation."""
    pairs = [letterbox(i, m, H, W) for i, m in zip(samples.images, samples.masks)]
    if not pairs:
        return torch.zeros((0, H, W, 3), dtype=torch.uint8), torch.zeros((0, H, W), dtype=torch.uint8)
    imgs = np.stack([p[0] for p in pairs])
    msks = np.stack([p[1] for p in pairs]).astype(np.uint8)
    return torch.from_numpy(imgs), torch.from_numpy(msks)
