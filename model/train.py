"""Training the person U-Net: `train(TrainConfig) -> TrainResult`.

Output folder:
  train_config.json          the run's config (a resume must match it)
  metrics.jsonl              one line per epoch: train loss, val loss/IoU/Dice/FPR, lr, seconds
  state/epoch_NNN.pt         resumable state (model, optimizer, scaler, epoch, RNG), torch.save of
                             plain tensors and dicts, read back with torch.load(weights_only=True)
  best.safetensors           best model by validation IoU, in the self-describing checkpoint format
  last.safetensors           the model after the last epoch, same format
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from .augment import AugmentConfig, EpochSampler, TrainingSet, letterboxed_arrays
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .data import SampleSet, load_samples, split_indices
from .losses import bce_dice_loss, confusion, scores
from .preprocess import Normalise, autocast
from .segmenter import resolve_device, resolve_precision
from .unet import ENCODERS, UNet, UNetConfig

# fields that may differ between a run and its resume without changing the result
_RESUME_FREE = ("resume", "device", "num_workers", "threads", "epochs", "out_dir")


@dataclass(frozen=True)
class TrainConfig:
    data: str                              # folder (images/ + masks/), COCO .json, or packed .npz
    out_dir: str
    coco_images: str | None = None         # image folder of a COCO file (default: next to it)
    val_data: str | None = None            # separate validation set; otherwise a split of `data`
    val_fraction: float = 0.1
    seed: int = 0
    model: UNetConfig = field(default_factory=UNetConfig)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"             # "onecycle" or "cosine" (with a short warm-up)
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    composites_per_epoch: int = 0          # synthetic composites per epoch (needs cut-outs + backgrounds)
    device: str = "auto"
    precision: str = "auto"                # auto | fp32 | bf16 | fp16 (fp16 only on CUDA)
    num_workers: int = 0
    threads: int | None = None             # torch CPU threads (None: torch's default)
    resume: bool = False
    init_weights: str | None = None        # start from a whole checkpoint (fine-tuning)
    init_encoder: str | None = None        # safetensors with the encoder's tensors (embed/stem/downs or encoder.*)
    encoder_lr_scale: float = 1.0          # the encoder's learning rate relative to lr (< 1 to keep pretrained features)

    def __post_init__(self) -> None:
        if self.encoder_lr_scale < 0:
            raise ValueError("encoder_lr_scale must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        raw = dict(raw)
        if isinstance(raw.get("model"), dict):
            m = dict(raw["model"])
            for key in ("mean", "std"):
                if key in m:
                    m[key] = tuple(m[key])
            raw["model"] = UNetConfig(**m)
        if isinstance(raw.get("augment"), dict):
            a = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["augment"].items()}
            raw["augment"] = AugmentConfig(**a)
        return cls(**raw)


@dataclass
class TrainResult:
    best_path: str | None
    best_epoch: int
    best_val_iou: float
    epochs_run: int
    history: list[dict]


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier at `step` of `total` (a pure function, so resuming needs only the step)."""
    t = min(1.0, step / max(1, total))
    if schedule == "onecycle":     # 30% warm-up from lr/25, cosine down to lr/1e4
        if t < 0.3:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * t / 0.3)) / 2
        return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * (t - 0.3) / 0.7)) / 2
    if schedule == "cosine":       # 3% linear warm-up, cosine to 0
        if t < 0.03:
            return (t + 1e-3) / 0.03
        return (1 + math.cos(math.pi * (t - 0.03) / 0.97)) / 2
    raise ValueError(f"unknown schedule {schedule!r}")


def _check_config(out: Path, cfg: TrainConfig) -> None:
    path = out / "train_config.json"
    mine = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    if cfg.resume and path.exists():
        # fields added since the run began take their defaults, so older run folders still resume
        saved = TrainConfig.from_dict(json.loads(path.read_text())).to_dict()
        saved = {k: v for k, v in saved.items() if k not in _RESUME_FREE}
        if json.loads(json.dumps(saved)) != json.loads(json.dumps(mine)):
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != json.loads(json.dumps(mine)).get(k))
            raise ValueError(f"{out}: resume with a different config (fields {diff}); use a new --out")
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))


def _split(cfg: TrainConfig) -> tuple[SampleSet, SampleSet]:
    samples = load_samples(cfg.data, cfg.coco_images)
    if cfg.val_data:
        return samples, load_samples(cfg.val_data)
    train_idx, val_idx = split_indices(samples.groups, cfg.val_fraction, cfg.seed)
    return samples.subset(train_idx), samples.subset(val_idx)


def load_encoder(model: UNet, path: str) -> int:
    """Copy the contracting path's tensors (the model's encoder_parts: embed.*, stem.*, downs.* or encoder.*)
    from a safetensors file (a project checkpoint or plain, e.g. model/recipe/fetch_encoder.py's); return how
    many. Every encoder tensor of the model must be there: a partial match would silently train from a
    half-initialised encoder."""
    try:
        _, state, _ = read_checkpoint(Path(path).read_bytes(), path)
    except ValueError:
        state = load_file(path)
    own = model.state_dict()
    wanted = {k for k in own if k.split(".")[0] in model.encoder_parts and not k.endswith("num_batches_tracked")}
    enc = {k: v for k, v in state.items() if k in wanted}
    bad = [k for k, v in enc.items() if v.shape != own[k].shape]
    missing = sorted(wanted - set(enc))
    if not enc or bad or missing:
        reason = "no usable encoder tensors" if not enc else f"shape mismatch for {bad[:3]}" if bad else \
            f"lacks {missing[:3]}"
        name = model.config.encoder
        raise ValueError(f"{path}: {reason}; the {name} encoder starts from {ENCODERS[name].pretrained}")
    model.load_state_dict(enc, strict=False)
    return len(enc)


def _build_model(cfg: TrainConfig, log: Callable[[str], None]) -> UNet:
    torch.manual_seed(cfg.seed)
    model = UNet(cfg.model)
    if cfg.init_weights:
        src, _ = load_checkpoint(cfg.init_weights)
        if src.config != cfg.model:
            raise ValueError(f"{cfg.init_weights}: its model config differs from this run's")
        model.load_state_dict(src.state_dict())
        log(f"initialised from {cfg.init_weights}")
    if cfg.init_encoder:
        log(f"encoder: {load_encoder(model, cfg.init_encoder)} tensors from {cfg.init_encoder}")
    return model


def _optimizer(model: UNet, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW without decay on BN weights and biases; with encoder_lr_scale != 1 the encoder's parameters get
    groups of their own carrying `lr_scale` (at 1 the two groups of earlier versions, so their states resume)."""
    encoder = {id(p) for p in model.encoder_parameters()} if cfg.encoder_lr_scale != 1.0 else set()
    groups = []
    for in_encoder, scale in ((True, cfg.encoder_lr_scale), (False, 1.0)):
        named = [(n, p) for n, p in model.named_parameters() if (id(p) in encoder) == in_encoder]
        groups += [{"params": [p for n, p in named if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for n, p in named if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


@torch.no_grad()
def validate(model: UNet, images: torch.Tensor, masks: torch.Tensor, norm: Normalise, precision: str,
             batch_size: int = 32) -> dict[str, float]:
    """Mean IoU/Dice over validation images that show people, mean false-positive rate over all
    images and over person-free ones, pooled pixel IoU, and mean loss (letterboxed data)."""
    model.eval()
    people, empty, fprs, pooled, loss_sum = [], [], [], [0, 0, 0, 0], 0.0
    for start in range(0, len(images), batch_size):
        x = norm(images[start:start + batch_size])
        y = masks[start:start + batch_size].to(norm.device).unsqueeze(1).float()
        with autocast(norm.device, precision):
            logits = model(x)
        loss_sum += float(bce_dice_loss(logits, y)) * len(x)
        pred = logits.float() > 0
        for p, t in zip(pred[:, 0], y[:, 0]):   # labels as they are: unknown pixels are not counted
            counts = confusion(p, t)
            pooled = [a + b for a, b in zip(pooled, counts)]
            s = scores(*counts)
            fprs.append(s["fpr"])
            (people if counts[0] + counts[2] else empty).append(s)
    if not fprs:
        return {}
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows) if rows else float("nan")
    return {"val_iou": mean(people, "iou"), "val_dice": mean(people, "dice"), "val_fpr": sum(fprs) / len(fprs),
            "val_fpr_person_free": mean(empty, "fpr"), "val_pixel_iou": scores(*pooled)["iou"],
            "val_loss": loss_sum / len(fprs)}


def _save_state(out: Path, state: dict, keep: int = 2) -> Path:
    folder = out / "state"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{state['epoch']:03d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_state(out_dir: str | os.PathLike) -> Path | None:
    states = sorted((Path(out_dir) / "state").glob("epoch_*.pt"))
    return states[-1] if states else None


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass
class _Progress:
    """Where a run stands after its last finished epoch (kept in each state file next to the tensors)."""
    epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def _resume(out: Path, cfg: TrainConfig, model, opt, scaler, device, log: Callable[[str], None]) -> _Progress:
    """The latest state of a resumed run loaded into model, optimizer, scaler and RNG; a fresh start otherwise."""
    path = latest_state(out) if cfg.resume else None
    if path is None:
        return _Progress()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["cpu"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    log(f"resumed from {path} (epoch {state['epoch']})")
    return _Progress(state["epoch"], state["best"], state["best_epoch"], state["history"])


def _train_epoch(model, loader, opt, scaler, norm: Normalise, cfg: TrainConfig, precision: str,
                 first_step: int, total_steps: int) -> tuple[float, float]:
    """One pass over the loader; returns (mean loss, last learning rate)."""
    model.train()
    loss_sum, n, lr = 0.0, 0, cfg.lr
    for i, (x, y) in enumerate(loader):
        lr = cfg.lr * lr_factor(cfg.schedule, first_step + i, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x, y = norm(x), y.to(norm.device, non_blocking=True).unsqueeze(1)
        with autocast(norm.device, precision):
            logits = model(x)
        loss = bce_dice_loss(logits, y, cfg.bce_weight, cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += float(loss.detach()) * len(x)
        n += len(x)
    return loss_sum / max(1, n), lr


def _device_and_precision(cfg: TrainConfig) -> tuple[torch.device, str]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA; use bf16 or fp32 on CPU")
    return device, precision


def _loader(dataset: TrainingSet, cfg: TrainConfig, device: torch.device):
    """A DataLoader over the seeded epoch permutation; returns it, its sampler and the steps per epoch."""
    drop_last = len(dataset) > cfg.batch_size
    sampler = EpochSampler(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0, pin_memory=device.type == "cuda")
    return loader, sampler, len(dataset) // cfg.batch_size if drop_last else 1


def _end_epoch(out: Path, cfg: TrainConfig, model, opt, scaler, device, row: dict, progress: _Progress) -> None:
    """After an epoch: the best checkpoint if it is the best yet, its metrics line, the resumable state."""
    score = row.get("val_iou", -row["train_loss"])
    score = -row["train_loss"] if score != score else score      # NaN: no validation image shows people
    if score > progress.best:
        progress.best, progress.best_epoch = score, row["epoch"]
        save_checkpoint(out / "best.safetensors", model, extra={
            "epoch": row["epoch"], "val_iou": row.get("val_iou"), "data": str(cfg.data), "seed": cfg.seed})
    progress.epoch = row["epoch"]
    progress.history.append(row)
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    _save_state(out, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                      "epoch": row["epoch"], "best": progress.best, "best_epoch": progress.best_epoch,
                      "history": progress.history, "rng": _rng_state(device)})


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train, validate and checkpoint every epoch; export the best model to out_dir/best.safetensors."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    device, precision = _device_and_precision(cfg)
    train_set, val_set = _split(cfg)
    log(f"data: {len(train_set)} train scenes, {len(val_set)} val scenes, {len(train_set.cutouts)} cut-outs, "
        f"{len(train_set.backgrounds)} backgrounds; device {device}, precision {precision}")

    model = _build_model(cfg, log).to(device).to(memory_format=torch.channels_last)
    opt = _optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    H, W = cfg.model.input_height, cfg.model.input_width
    dataset = TrainingSet(train_set, H, W, cfg.augment, cfg.seed, cfg.composites_per_epoch)
    val_images, val_masks = letterboxed_arrays(val_set, H, W)
    norm = Normalise(cfg.model, device)
    progress = _resume(out, cfg, model, opt, scaler, device, log)
    (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in progress.history))

    loader, sampler, steps_per_epoch = _loader(dataset, cfg, device)
    for epoch in range(progress.epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        loss, lr = _train_epoch(model, loader, opt, scaler, norm, cfg, precision,
                                epoch * steps_per_epoch, steps_per_epoch * cfg.epochs)
        row = {"epoch": epoch + 1, "train_loss": loss, "lr": lr}
        row.update(validate(model, val_images, val_masks, norm, precision))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        _end_epoch(out, cfg, model, opt, scaler, device, row, progress)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    save_checkpoint(out / "last.safetensors", model, extra={"epoch": len(progress.history), "data": str(cfg.data),
                                                            "seed": cfg.seed})
    best_path = out / "best.safetensors"
    return TrainResult(str(best_path) if best_path.exists() else None, progress.best_epoch,
                       progress.best if val_images.numel() else float("nan"), len(progress.history), progress.history)
