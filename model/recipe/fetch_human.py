"""Build the human-labelled training folders and the held-out eval set (issue 11).

    .venv/bin/python model/recipe/fetch_human.py [--git-dir OWNER/NAME=DIR ...] [--write-tsv]

Sources are pinned by URL + commit in human_sources.py; each is read from a bare git dir
given with --git-dir, or cloned here. The split is seeded and stable; every image's sha256
is checked against DATA.tsv / EVAL.tsv (rewrite them only with --write-tsv).
Writes model/recipe/.cache/human/{train,eval}/{images,masks}, cutouts/, backgrounds/, READY.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import human_sources as hs  # noqa: E402
from human_cutouts import cutout_name, cutout_rgba  # noqa: E402
from human_git import open_tree  # noqa: E402

RECIPE = Path(__file__).resolve().parent
SEED = 11
CCP_EVAL = 60          # Clothing Co-Parsing photos held out (seeded random choice)
COCO_EVAL_SHARE = 2 / 3  # of COCO photos with people: the project is judged on such photos
FREE_EVAL = 32         # COCO person-free photos held out (at least 30 wanted)
MASK_NOTE = ("masks: 255 person, 128 unknown (COCO crowds; CCP beyond a band of 5% of the image "
             "height around the subject), 0 background")
COLUMNS = ["name", "role", "sha256", "source", "split", "licence"]


def stable_unit(name: str) -> float:
    """A number in [0, 1) fixed by the seed and the name: adding sources moves no split."""
    digest = hashlib.sha256(f"{SEED}:{name}".encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def gather(trees: dict) -> list[hs.Item]:
    """Every item once; the first source naming a COCO image wins (panoptic before JSON)."""
    items: dict[str, hs.Item] = {}
    streams = [hs.ccp_items(trees["ccp"]), hs.coco128_items(trees["coco128"])]
    for path, folder in [("data/labels/train.json", "data/images"),
                         ("data/labels/val.json", "data/images")]:
        # minicoco's own train/val split of its 40 images; all of them are COCO train2017 images
        # (hs.require_train2017 refuses any other)
        streams.append(hs.coco_json_items(trees["minicoco"], path, folder))
    for stream in streams:
        for item in stream:
            items.setdefault(item.name, item)
    return sorted(items.values(), key=lambda it: it.name)


def assign_splits(items: list[hs.Item]) -> dict[str, str]:
    ccp = [it.name for it in items if it.group == "ccp"]
    held = set(random.Random(SEED).sample(ccp, CCP_EVAL))
    free = sorted((it.name for it in items if not it.people), key=stable_unit)
    held |= set(free[:FREE_EVAL])
    held |= {it.name for it in items
             if it.people and it.group != "ccp" and stable_unit(it.name) < COCO_EVAL_SHARE}
    return {it.name: "eval" if it.name in held else "train" for it in items}


def write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"cannot write {path}")


def write_image(path: Path, data: bytes) -> None:
    """The file as fetched when it is a JPEG, else re-encoded (the TSV keeps the fetched sha)."""
    if data[:3] == b"\xff\xd8\xff":
        path.write_bytes(data)
    else:
        cv2.imwrite(str(path), hs.decode_image(data), [cv2.IMWRITE_JPEG_QUALITY, 95])


def emit(item: hs.Item, split: str, out: Path, rows: list[dict], seen: dict[str, str]) -> None:
    """Write one item's files and its TSV rows."""
    labelled = item.load()
    sha = hashlib.sha256(labelled.image).hexdigest()
    if sha in seen:  # the same photo under two names: keep it once, on one side only
        print(f"skip {item.name}: same file as {seen[sha]}")
        return
    seen[sha] = item.name
    row = {"sha256": sha, "source": item.source, "split": split, "licence": item.licence}
    scene = out / split
    write_image(scene / "images" / f"{item.name}.jpg", labelled.image)
    write_png(scene / "masks" / f"{item.name}.png", labelled.mask)
    rows.append({"name": item.name, "role": "scene", **row})
    if split == "eval":
        return
    if not item.people:
        write_image(out / "backgrounds" / f"{item.name}.jpg", labelled.image)
        rows.append({"name": item.name, "role": "background", **row})
    image = hs.decode_image(labelled.image)
    for index, person in enumerate(labelled.people):
        name = cutout_name(item.name, index, person, labelled.mask)
        if name:
            write_png(out / "cutouts" / f"{name}.png", cutout_rgba(image, person))
            rows.append({"name": name, "role": "cutout", **row})


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:] if line]


def write_tsv(path: Path, rows: list[dict]) -> None:
    lines = ["\t".join(COLUMNS)] + ["\t".join(r[c] for c in COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def others(path: Path) -> list[dict]:
    """Rows this script does not make (street_labels.py's frames of a clip in this repository: source
    `examples/...`): kept as they are when the file is rewritten, left out of the check."""
    return [r for r in read_tsv(path) if r["source"].startswith("examples/")] if path.exists() else []


def check_or_write(rows: list[dict], write: bool) -> None:
    for split, path in [("train", RECIPE / "DATA.tsv"), ("eval", RECIPE / "EVAL.tsv")]:
        mine = sorted((r for r in rows if r["split"] == split), key=lambda r: (r["name"], r["role"]))
        if write or not path.exists():
            write_tsv(path, mine + others(path))
            continue
        recorded = {(r["name"], r["role"]): r for r in read_tsv(path) if not r["source"].startswith("examples/")}
        got = {(r["name"], r["role"]): r for r in mine}
        if recorded.keys() != got.keys():
            raise SystemExit(f"{path.name}: rows differ: missing {sorted(recorded.keys() - got.keys())[:5]}"
                             f", new {sorted(got.keys() - recorded.keys())[:5]} (--write-tsv to accept)")
        bad = [k for k in got if got[k]["sha256"] != recorded[k]["sha256"]]
        if bad:
            raise SystemExit(f"{path.name}: sha256 differs for {bad[:5]}")


def counts(rows: list[dict], items: dict[str, hs.Item]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for r in rows:
        item = items[r["name"]] if r["role"] != "cutout" else None
        kind = "cutout" if item is None else ("people" if item.people else "person_free")
        if r["role"] == "background":
            kind = "background"
        group = (item.group if item else r["name"].split("_")[0])
        key = f"{r['split']}.{kind}.{group}"
        tally[key] = tally.get(key, 0) + 1
    return dict(sorted(tally.items()))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", action="append", default=[], metavar="OWNER/NAME=DIR",
                        help="a local bare git dir holding that repository (else it is cloned)")
    parser.add_argument("--out", type=Path, default=RECIPE / ".cache" / "human")
    parser.add_argument("--write-tsv", action="store_true", help="rewrite DATA.tsv and EVAL.tsv")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    git_dirs = dict(spec.split("=", 1) for spec in args.git_dir)
    git_dirs = {key: Path(value) for key, value in git_dirs.items()}
    clones = args.out.parent / "human-repos"
    clones.mkdir(parents=True, exist_ok=True)
    trees = {key: open_tree(url, commit, git_dirs, clones) for key, (url, commit) in
             {"ccp": hs.CCP, "coco128": hs.COCO128, "minicoco": hs.MINICOCO}.items()}
    items = gather(trees)
    splits = assign_splits(items)
    # Built beside the old folder and swapped in at the end, so a trainer reading the old one
    # never sees a half-written set.
    building = args.out.with_name(args.out.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    for folder in ["train/images", "train/masks", "eval/images", "eval/masks", "cutouts", "backgrounds"]:
        (building / folder).mkdir(parents=True)
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for item in items:
        emit(item, splits[item.name], building, rows, seen)
    check_or_write(rows, args.write_tsv)
    tally = counts(rows, {it.name: it for it in items})
    text = (f"# built {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {MASK_NOTE}\n"
            + "\n".join(f"{k}\t{v}" for k, v in tally.items()) + "\n")
    (building / "READY").write_text(text)  # the lead's trainer waits for this file
    swap_in(building, args.out)
    print(text, end="")


def swap_in(building: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    building.rename(out)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    main()
