"""U-Net (Ronneberger et al., 2015): a contracting path for context, an expansive path
with skip connections for localisation, one person logit per pixel."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the model and feed it; saved inside every checkpoint."""

    name: str = "unet"
    in_channels: int = 3
    base_width: int = 16          # channels of the first level; doubles at each level down
    depth: int = 4                # number of down-sampling steps
    input_height: int = 192       # frames are letterboxed to this size
    input_width: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    threshold: float = 0.5
    upsample: str = "transpose"   # "transpose" (paper: up-convolution) or "bilinear"
    # 2: a strided 2x2 conv embeds the input at half resolution before the U-Net, and the logits
    # are upsampled x2 at the end: ~4x cheaper, for CPU throughput. 1: the classic full-resolution U-Net.
    stem_stride: int = 1

    def __post_init__(self) -> None:
        if self.depth < 1 or self.base_width < 1 or self.in_channels < 1:
            raise ValueError("depth, base_width and in_channels must be >= 1")
        if self.stem_stride not in (1, 2):
            raise ValueError("stem_stride must be 1 or 2")
        step = 2 ** self.depth * self.stem_stride
        if self.input_height % step or self.input_width % step:
            raise ValueError(f"input size {self.input_height}x{self.input_width} must be divisible by 2**depth={step}")
        if self.upsample not in ("transpose", "bilinear"):
            raise ValueError("upsample must be 'transpose' or 'bilinear'")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields: {sorted(unknown)}")
        for key in ("mean", "std"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2, padded so sizes stay aligned with the skip connections."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv: one step of the contracting path."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """Up-sample, concatenate the skip connection, DoubleConv: one step of the expansive path."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cout, 1))
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd sizes when used outside the letterbox
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = [config.base_width * 2 ** i for i in range(config.depth + 1)]
        if config.stem_stride == 1:
            self.embed = nn.Identity()
            self.stem = DoubleConv(config.in_channels, widths[0])
        else:
            s = config.stem_stride
            self.embed = nn.Sequential(nn.Conv2d(config.in_channels, widths[0], s, stride=s, bias=False),
                                       nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
            self.stem = DoubleConv(widths[0], widths[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(Up(b, a, config.upsample) for a, b in reversed(list(zip(widths[:-1], widths[1:]))))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def encoder_parameters(self):
        """Parameters of the contracting path (for optional pretrained initialisation)."""
        yield from self.embed.parameters()
        yield from self.stem.parameters()
        yield from self.downs.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = [self.stem(self.embed(x))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        x = self.head(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


def build_unet(config: UNetConfig | None = None, **overrides) -> UNet:
    """Build a randomly initialised U-Net from a config (plus field overrides)."""
    config = dataclasses.replace(config or UNetConfig(), **overrides)
    return UNet(config)
