"""`humanseg-batch train` and `humanseg-batch eval`: thin click wrappers over model.train / model.evaluate.

The main CLI adds them with `cli.add_command(train)` and `cli.add_command(eval_)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from humanseg_batch.model.augment import AugmentConfig
from humanseg_batch.model.unet import UNetConfig


@click.command("train")
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Run folder: config, metrics.jsonl, state/, best.safetensors.")
@click.option("--coco-images", type=click.Path(exists=True, file_okay=False), help="Image folder of a COCO .json (default: next to it).")
@click.option("--val-data", type=click.Path(exists=True), help="Separate validation set (same formats as DATA).")
@click.option("--val-fraction", default=0.1, show_default=True, help="Fraction of DATA held out for validation when --val-data is not given.")
@click.option("--seed", default=0, show_default=True, help="Seeds the split, the initial weights, the order and the augmentation.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["onecycle", "cosine"]), default="onecycle", show_default=True)
@click.option("--base-width", default=8, show_default=True, help="U-Net channels at the first level.")
@click.option("--depth", default=3, show_default=True, help="U-Net down-sampling steps.")
@click.option("--input-size", default="96x128", show_default=True, help="Model input HEIGHTxWIDTH; frames are letterboxed to it.")
@click.option("--stem-stride", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="2: a strided embedding runs the U-Net at half the input resolution (~4x fewer FLOPs).")
@click.option("--upsample", type=click.Choice(["transpose", "bilinear"]), default="transpose", show_default=True)
@click.option("--encoder", type=click.Choice(["unet", "mobilenetv2"]), default="unet", show_default=True,
              help="Contracting path: the paper's (unet) or MobileNetV2's first --depth stages (mobilenetv2; "
                   "depth 1-5, --base-width sets the expansive path), which can start from ImageNet weights "
                   "via --init-encoder (see model/recipe/fetch_encoder.py).")
@click.option("--composites", "composites_per_epoch", default=0, show_default=True,
              help="Synthetic composites per epoch (packed data with cut-outs and backgrounds).")
@click.option("--no-augment", is_flag=True, help="Only letterbox-style geometry, no colour/blur/noise.")
@click.option("--channel-swap", default=0.0, show_default=True,
              help="Probability of permuting the RGB channels (keeps few people from teaching 'this colour = person').")
@click.option("--distractors", default=0, show_default=True,
              help="Up to this many recoloured person-free blobs pasted into each composite (mask 0).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 (or fp16) on CUDA, bf16 on CPUs with native bf16, else fp32.")
@click.option("--workers", "num_workers", default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out (same config).")
@click.option("--init-weights", type=click.Path(exists=True, dir_okay=False), help="Start from a whole model checkpoint.")
@click.option("--init-encoder", type=click.Path(exists=True, dir_okay=False),
              help="safetensors file with the encoder's tensors (embed/stem/downs.*, or encoder.* for mobilenetv2), "
                   "e.g. a project checkpoint.")
@click.option("--encoder-lr-scale", default=1.0, show_default=True,
              help="Encoder learning rate relative to --lr (e.g. 0.3 to keep pretrained features).")
def train(data, input_size, base_width, depth, stem_stride, upsample, encoder, no_augment, channel_swap, distractors,
          **opts):
    """Train the person U-Net on DATA: a folder with images/ and masks/ (same file names), a COCO
    instances .json (person category; polygons and RLE), or a packed .npz.

    Writes a checkpoint every epoch to --out/state/ and the best model by validation IoU to
    --out/best.safetensors (usable as --weights)."""
    from humanseg_batch.model.train import TrainConfig, train as run_training

    try:
        h, w = (int(v) for v in input_size.lower().split("x"))
        model = UNetConfig(base_width=base_width, depth=depth, input_height=h, input_width=w, upsample=upsample,
                            stem_stride=int(stem_stride), encoder=encoder)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-size/--depth/--encoder") from None
    try:
        aug = AugmentConfig(zoom=(0.9, 1.1), rotate=0.0, shift=0.0, colour=0.0, blur=0.0, noise=0.0, grey=0.0) \
            if no_augment else AugmentConfig(channel_swap=channel_swap, distractors=(0, distractors))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel-swap/--distractors") from None
    try:
        cfg = TrainConfig(data=str(data), model=model, augment=aug, **opts)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        result = run_training(cfg, log=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"best epoch {result.best_epoch}: val IoU {result.best_val_iou:.4f} -> {result.best_path}")


@click.command("eval")
@click.argument("data", type=click.Path(exists=True))
@click.option("--weights", help="Checkpoint file, or a shipped model's name: fast, quality, or default (quality on "
                                "CUDA, fast on CPU). Default: default.")
@click.option("--csv", "out_csv", type=click.Path(), help="Per-image rows: counts, IoU, Dice, precision, recall, FPR.")
@click.option("--json", "out_json", type=click.Path(), help="Overall numbers as JSON.")
@click.option("--coco-images", type=click.Path(exists=True, file_okay=False), help="Image folder of a COCO .json.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--threshold", type=float, help="Person probability threshold (default: the checkpoint's).")
@click.option("--sheet", type=click.Path(dir_okay=False),
              help="Contact sheet PNG of the 24 worst images (red: predicted person, green: true outline).")
def eval_(data, weights, out_csv, out_json, coco_images, device, precision, batch_size, threshold, sheet):
    """Score a checkpoint on labelled DATA (folder with images/ + masks/, COCO .json, or packed .npz).

    Per image (--csv): IoU, Dice, precision, recall, false-positive rate and person size. Overall (printed,
    --json): mean IoU on photos with people, also by person size (small < 2 % of the frame, medium 2-15 %,
    large > 15 %), and person pixels marked on person-free photos. Mask pixels of value 128 are unknown
    and not scored."""
    from humanseg_batch.model.evaluate import evaluate

    try:
        overall = evaluate(weights, data, out_csv, out_json, device=device, precision=precision,
                           batch_size=batch_size, threshold=threshold, coco_images=coco_images, sheet=sheet)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(overall, indent=2))
