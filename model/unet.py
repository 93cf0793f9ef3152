"""U-Net (Ronneberger et al., 2015): a contracting path for context, an expansive path
with skip connections for localisation, one person logit per pixel."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F


# MobileNetV2 inverted-residual stages (expansion t, channels c, repeats n, stride s), as in the paper
MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))
# (index into `features` after which the feature map is tapped, its channels) at strides 2, 4, 8, 16, 32
MBV2_TAPS = ((1, 16), (3, 24), (6, 32), (13, 96), (17, 320))


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
    upsample: str = "transpose"   # "transpose" (paper: up-convolution) or "bilinear"; the mobilenetv2
                                  # encoder's expansive path always resizes bilinearly
    # 2: a strided 2x2 conv embeds the input at half resolution before the U-Net, and the logits
    # are upsampled x2 at the end: ~4x cheaper, for CPU throughput. 1: the classic full-resolution U-Net.
    stem_stride: int = 1
    # "unet": the paper's contracting path (DoubleConv + max-pool, base_width doubling per level).
    # "mobilenetv2": the contracting path is MobileNetV2's first `depth` stages (Sandler et al., 2018),
    # so it can start from ImageNet weights; skips are tapped at strides 2..2**depth and the expansive
    # path (base_width * 2**level channels) ends at stride 2, its logits upsampled x2.
    encoder: str = "unet"

    def __post_init__(self) -> None:
        if self.depth < 1 or self.base_width < 1 or self.in_channels < 1:
            raise ValueError("depth, base_width and in_channels must be >= 1")
        if self.stem_stride not in (1, 2):
            raise ValueError("stem_stride must be 1 or 2")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}")
        ENCODERS[self.encoder].check(self)
        step = 2 ** self.depth * self.stem_stride
        if self.input_height % step or self.input_width % step:
            raise ValueError(f"input size {self.input_height}x{self.input_width} must be divisible by 2**depth={step}")
        if self.upsample not in ("transpose", "bilinear"):
            raise ValueError("upsample must be 'transpose' or 'bilinear'")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")

    @property
    def tag(self) -> str:
        """Short description for output rows and reports, e.g. unet-mobilenetv2-w8d4-128x96."""
        enc = "" if self.encoder == "unet" else f"-{self.encoder}"
        return f"{self.name}{enc}-w{self.base_width}d{self.depth}-{self.input_width}x{self.input_height}"

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


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else _conv_bn(cin, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2's feature extractor up to the tap at stride 2**depth; module names follow the common
    `features.N` layout so ImageNet state dicts load directly."""

    def __init__(self, depth: int):
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
        cin = 32
        for t, c, n, s in MBV2_STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.taps = [index for index, _ in MBV2_TAPS[:depth]]
        self.channels = [ch for _, ch in MBV2_TAPS[:depth]]
        self.features = nn.Sequential(*blocks[: self.taps[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


class UpSkip(nn.Module):
    """Expansive step for an encoder with its own channel counts: bilinear x2, concatenate the skip, DoubleConv."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


# ---- the contracting paths, by name ----

@dataclass(frozen=True)
class Encoder:
    """A contracting path the U-Net can be built on, one entry of ENCODERS (segmentation_models_pytorch keeps
    such a table): `build` returns its modules by attribute name, in construction order; those names are the
    state-dict prefixes of its tensors, so they are also what a pretrained encoder file must hold."""
    check: Callable[[UNetConfig], None]                          # ValueError for a config it cannot build
    build: Callable[[UNetConfig], dict[str, nn.Module]]
    skips: Callable[[UNetConfig], list[int]]                     # channels of its feature maps, finest first
    # the expansive path that fits those skips: its steps (deepest first) and the head's input channels
    expansive: Callable[[UNetConfig, list[int]], tuple[nn.ModuleList, int]]
    contract: Callable[["UNet", torch.Tensor], list[torch.Tensor]]   # feature maps, finest first
    pretrained: str                                              # the weights it can start from


def _paper_skips(c: UNetConfig) -> list[int]:
    return [c.base_width * 2 ** i for i in range(c.depth + 1)]


def _paper_build(c: UNetConfig) -> dict[str, nn.Module]:
    widths = _paper_skips(c)
    if c.stem_stride == 1:
        embed, stem = nn.Identity(), DoubleConv(c.in_channels, widths[0])
    else:
        s = c.stem_stride
        embed = nn.Sequential(nn.Conv2d(c.in_channels, widths[0], s, stride=s, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stem = DoubleConv(widths[0], widths[0])
    return {"embed": embed, "stem": stem, "downs": nn.ModuleList(Down(a, b) for a, b in zip(widths[:-1], widths[1:]))}


def _paper_expansive(c: UNetConfig, skips: list[int]) -> tuple[nn.ModuleList, int]:
    pairs = reversed(list(zip(skips[:-1], skips[1:])))
    return nn.ModuleList(Up(b, a, c.upsample) for a, b in pairs), skips[0]


def _paper_contract(unet: "UNet", x: torch.Tensor) -> list[torch.Tensor]:
    skips = [unet.stem(unet.embed(x))]
    for down in unet.downs:
        skips.append(down(skips[-1]))
    return skips


def _mbv2_check(c: UNetConfig) -> None:
    if c.depth > len(MBV2_TAPS) or c.stem_stride != 1 or c.in_channels != 3:
        raise ValueError(f"the mobilenetv2 encoder takes depth 1..{len(MBV2_TAPS)}, stem_stride 1 and 3 channels")


def _mbv2_expansive(c: UNetConfig, skips: list[int]) -> tuple[nn.ModuleList, int]:
    # the deepest tap feeds the expansive path directly; level j (stride 2**(j+1)) has base_width * 2**j channels
    widths = [c.base_width * 2 ** j for j in range(c.depth)]
    ins = widths[1:-1] + [skips[-1]]                     # what arrives at level j from below
    ups = nn.ModuleList(UpSkip(ins[j], skips[j], widths[j]) for j in reversed(range(c.depth - 1)))
    return ups, widths[0] if c.depth > 1 else skips[0]


ENCODERS: dict[str, Encoder] = {
    "unet": Encoder(
        check=lambda c: None, build=_paper_build, skips=_paper_skips, expansive=_paper_expansive,
        contract=_paper_contract, pretrained="a checkpoint of this project with the same config (embed/stem/downs)"),
    "mobilenetv2": Encoder(
        check=_mbv2_check, build=lambda c: {"encoder": MobileNetV2Encoder(c.depth)},
        skips=lambda c: [ch for _, ch in MBV2_TAPS[:c.depth]], expansive=_mbv2_expansive,
        contract=lambda unet, x: unet.encoder(x),
        pretrained="ImageNet MobileNetV2 as features.N.* under encoder. (model/recipe/fetch_encoder.py)"),
}


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        spec = ENCODERS[config.encoder]
        parts = spec.build(config)
        for name, module in parts.items():
            setattr(self, name, module)
        self.encoder_parts = tuple(parts)
        self.ups, head_channels = spec.expansive(config, spec.skips(config))
        self.head = nn.Conv2d(head_channels, 1, 1)

    def encoder_parameters(self):
        """Parameters of the contracting path (for optional pretrained initialisation)."""
        for name in self.encoder_parts:
            yield from getattr(self, name).parameters()

    def contract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The contracting path: feature maps from the finest skip to the deepest level."""
        return ENCODERS[self.config.encoder].contract(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = self.contract(x)
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
