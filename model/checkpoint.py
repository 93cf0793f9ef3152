"""Self-describing checkpoints: safetensors weights + the UNetConfig + a content hash.

Loading never unpickles: a pickled `torch.save` file is refused, and a file whose
config or tensors do not match its recorded hash is refused as tampered.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from .unet import UNet, UNetConfig

FORMAT = "humanseg-batch/unet-v1"
# What the recorded sha256 covers. Files without this key are older and hash their tensors only; they
# still load. (The hash guards against corruption and careless edits; anyone can recompute it.)
HASHED = "config+tensors"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TIERS = ("fast", "quality")
# names that earlier releases shipped, and what now stands in their place
RENAMED = {"hires": "quality"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong format, tampered, or mismatched."""


def default_tier(device: str | None = None) -> str:
    """The tier `default` means: `quality` where the model runs on CUDA, `fast` on CPUs.
    device: "cuda", "cpu", or None/"auto" for what this process sees."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "quality" if str(device).startswith("cuda") else "fast"


def default_weights_path(device: str | None = None) -> Path:
    """The shipped weights `default` resolves to on `device` (see `default_tier`)."""
    return WEIGHTS_DIR / f"{default_tier(device)}.safetensors"


def shipped_weights() -> dict[str, Path]:
    """Models shipped inside the package, by name ("fast", "quality"): `--weights NAME` picks one."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def is_model_name(text: str) -> bool:
    """A bare name (no folder separator, no .safetensors suffix, not an existing file) names a shipped model."""
    return not (Path(text).is_file() or "/" in text or os.sep in text or text.endswith(".safetensors")
                or "://" in text)


def resolve_weights(path: str | os.PathLike | None, device: str | None = None) -> Path:
    """None or 'default': the tier for `device` (see `default_tier`); a bare name: that shipped model
    (CheckpointError if there is none); else the path."""
    if path is None or str(path) == "default":
        return default_weights_path(device)
    text = str(path)
    if is_model_name(text):
        shipped = shipped_weights()
        name = RENAMED.get(text, text)
        if name not in shipped:
            raise CheckpointError(f"no shipped model named {text!r} and no such file (shipped models: "
                                  f"{', '.join(['default'] + list(shipped))}; a path needs a / or .safetensors)")
        return shipped[name]
    return Path(text)


def tensors_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_hash(config_json: str, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the config text as stored and the tensors: everything a load turns into a model."""
    return hashlib.sha256(f"{config_json}\n{tensors_hash(state)}".encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, model: UNet, extra: dict | None = None, half: bool = False) -> str:
    """Write model weights + config atomically; return the checkpoint hash. half: store floating-point
    tensors as fp16 (half the file; loading casts them back to the model's fp32)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    config = model.config.to_json()
    meta = {"format": FORMAT, "config": config, "sha256": checkpoint_hash(config, state), "hashed": HASHED,
            "extra": json.dumps(extra or {}, sort_keys=True)}
    data = st_save(state, metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return meta["sha256"]


def _check_hash(meta: dict, state: dict[str, torch.Tensor], source: str) -> None:
    if meta.get("hashed") == HASHED:
        digest = checkpoint_hash(meta.get("config", ""), state)
    elif "hashed" not in meta:      # written before the config was hashed (up to 2026-12-01): tensors only
        digest = tensors_hash(state)
    else:
        raise CheckpointError(f"{source}: unknown hash scope {meta['hashed']!r}")
    if digest != meta.get("sha256"):
        raise CheckpointError(f"{source}: hash {digest[:16]} of its {meta.get('hashed', 'tensors')} does not match "
                              f"the recorded {str(meta.get('sha256'))[:16]}: the file was modified or corrupted")


def read_checkpoint(data: bytes, source: str = "checkpoint") -> tuple[UNetConfig, dict[str, torch.Tensor], dict]:
    """Parse and verify checkpoint bytes; return (config, state_dict, metadata)."""
    if data[:2] == b"\x80\x02" or data[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{source}: looks like a pickled torch.save file; only humanseg-batch "
                              "safetensors checkpoints are loaded (pickles can execute code)")
    try:
        state = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: not a safetensors checkpoint ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source}: format {meta.get('format')!r}, expected {FORMAT!r}")
    _check_hash(meta, state, source)
    try:
        config = UNetConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad config in checkpoint ({exc})") from None
    meta = dict(meta, extra=json.loads(meta.get("extra") or "{}"))
    return config, state, meta


def load_checkpoint(path: str | os.PathLike | None = None, device: str | None = None) -> tuple[UNet, dict]:
    """Load a verified model (eval mode) and its metadata; None or 'default' means the tier for `device`
    (`default_tier`), a bare name one of the shipped models (`shipped_weights()`)."""
    source = resolve_weights(path, device)
    if source.is_dir():
        raise CheckpointError(f"weights path is a folder, not a checkpoint file: {source}")
    if not source.exists():
        if path is None:
            raise CheckpointError("no default weights are installed; pass --weights PATH")
        names = ", ".join(shipped_weights()) or "none"
        raise CheckpointError(f"weights file not found: {source} (shipped models: {names})")
    config, state, meta = read_checkpoint(source.read_bytes(), str(source))
    model = UNet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the recorded config ({exc})") from None
    model.eval()
    return model, {"path": str(source), "sha256": meta["sha256"], "config": config, "extra": meta["extra"]}
