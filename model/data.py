"""Labelled data for training and evaluation: image folders, COCO annotations, packed .npz files.

Everything is held in memory as uint8 RGB images and uint8 label masks: 0 background, 1 person,
2 unknown (pixels whose label nobody gave, e.g. background people a data set leaves unlabelled: the
loss and the metrics skip them). The augmentation in `model/augment.py` turns them into fixed-size
training tensors.

Label files on disk: 0 background, 128 unknown, any other non-zero value person (so plain 0/1 and
0/255 masks read as they always did).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PACK_FORMAT = "humanseg-batch/pack-v1"
UNKNOWN = 2            # label value in memory
UNKNOWN_LEVEL = 128    # the same in label files and packs


def to_label(raw: np.ndarray) -> np.ndarray:
    """A label file's values (0, 128 unknown, other non-zero person) -> 0/1/UNKNOWN."""
    out = (raw > 0).astype(np.uint8)
    out[raw == UNKNOWN_LEVEL] = UNKNOWN
    return out


def to_levels(label: np.ndarray) -> np.ndarray:
    """0/1/UNKNOWN labels -> 0/255/128 grey levels for PNG files and packs."""
    out = np.where(label == 1, 255, 0).astype(np.uint8)
    out[label == UNKNOWN] = UNKNOWN_LEVEL
    return out


@dataclass
class SampleSet:
    """Whole labelled scenes plus optional cut-out people and backgrounds for compositing."""

    images: list[np.ndarray] = field(default_factory=list)     # HxWx3 uint8 RGB
    masks: list[np.ndarray] = field(default_factory=list)      # HxW uint8, 1 = person
    names: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)            # samples of one group stay on one side of the split
    cutouts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # (rgb, alpha 0..255)
    backgrounds: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def add(self, image: np.ndarray, mask: np.ndarray, name: str, group: str | None = None) -> None:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"{name}: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        self.images.append(image)
        # values already 0/1/UNKNOWN are kept; anything else non-zero is person
        self.masks.append(mask if mask.max(initial=0) <= UNKNOWN and mask.dtype == np.uint8
                          else (mask > 0).astype(np.uint8))
        self.names.append(name)
        self.groups.append(group if group is not None else name)

    def subset(self, indices) -> "SampleSet":
        """Scenes at `indices`; cut-outs and backgrounds are kept whole (they are training material)."""
        out = SampleSet(cutouts=self.cutouts, backgrounds=self.backgrounds)
        for i in indices:
            out.add(self.images[i], self.masks[i], self.names[i], self.groups[i])
        return out


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label file as 0/1/UNKNOWN (128 = unknown, any other non-zero value = person)."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError(f"cannot read mask {path}")
    if m.ndim == 3:
        m = m[..., 3] if m.shape[2] == 4 else m.max(axis=2)
    return to_label(m) if m.dtype == np.uint8 else (m > 0).astype(np.uint8)


def folder_pairs(data_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a labelled folder: `images/` and `masks/` with the same file stems."""
    root = Path(data_dir)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise ValueError(f"{root}: expected sub-folders images/ and masks/ (same file names, any image extension)")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    pairs, missing = [], []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        (pairs if img.stem in masks else missing).append((img, masks.get(img.stem)))
    if missing:
        raise ValueError(f"{root}: no mask for {len(missing)} image(s), e.g. {missing[0][0].name}")
    if not pairs:
        raise ValueError(f"{root}: no images found in images/")
    return pairs


def load_folder(data_dir: str | os.PathLike) -> SampleSet:
    """Load a labelled folder (see `folder_pairs`); optional `cutouts/` (RGBA PNGs of single people) and
    `backgrounds/` (person-free photos) beside images/ and masks/ become compositing material."""
    root = Path(data_dir)
    out = SampleSet()
    for img, mask in folder_pairs(root):
        out.add(read_rgb(img), read_label(mask), img.name, group_of(img.name))
    return add_material(out, root)


def add_material(samples: SampleSet, root: str | os.PathLike) -> SampleSet:
    """Add the compositing material of folder `root`: cutouts/ (RGBA PNGs of single people, alpha = the
    person) and backgrounds/ (person-free photos); either may be absent."""
    root = Path(root)
    for path in _image_files(root / "cutouts"):
        rgba = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ValueError(f"{path}: a cut-out must be an RGBA image")
        samples.cutouts.append((cv2.cvtColor(rgba[..., :3], cv2.COLOR_BGR2RGB), rgba[..., 3].copy()))
    samples.backgrounds.extend(read_rgb(p) for p in _image_files(root / "backgrounds"))
    return samples


def group_of(name: str) -> str:
    """Samples named `GROUP__rest` share a group (frames of one clip, crops of one photo): they stay on
    one side of a train/validation split. Other names are groups of their own."""
    return name.split("__")[0] if "__" in name else name


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else []


# ---------------------------------------------------------------- COCO

def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string: 5-bit groups (+48 to printable), a continuation bit,
    a sign bit on the last group, and every count after the second stored as a difference from
    the count two places before."""
    counts: list[int] = []
    pos = 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            c = ord(s[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and (c & 0x10):
                value -= 1 << shift          # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (counts as a list or as a compressed string) -> HxW uint8 mask.

    Runs alternate 0s and 1s, starting with 0s, in column-major (Fortran) order."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = rle_counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {h}*{w}={h * w}")
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return flat.reshape((w, h)).T.copy()


def decode_polygons(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons ([x0, y0, x1, y1, ...] lists, pixel coordinates) -> HxW uint8 mask."""
    mask = np.zeros((height, width), np.uint8)
    shift = 3  # sub-pixel vertices: fillPoly takes fixed-point coordinates with `shift` fraction bits
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2) * (1 << shift)).astype(np.int32)
           for p in polygons if len(p) >= 6]
    if pts:
        cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=shift)
    return mask


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """One COCO annotation's `segmentation` field (polygons, RLE or compressed RLE) -> mask."""
    if isinstance(segmentation, list):
        return decode_polygons(segmentation, height, width)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def coco_person_masks(annotations: dict, category: str = "person") -> dict[int, np.ndarray]:
    """Union of all `category` annotations per image id (images without any get an empty mask)."""
    cat_ids = {c["id"] for c in annotations.get("categories", []) if c.get("name") == category}
    if not cat_ids:
        raise ValueError(f"COCO file has no category named {category!r}")
    masks = {im["id"]: np.zeros((im["height"], im["width"]), np.uint8) for im in annotations["images"]}
    for ann in annotations.get("annotations", []):
        if ann.get("category_id") in cat_ids and ann.get("segmentation"):
            target = masks[ann["image_id"]]
            target |= annotation_mask(ann["segmentation"], *target.shape)
    return masks


def load_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike | None = None,
              category: str = "person") -> SampleSet:
    """Load a COCO instances file; images are looked up in `image_dir` (default: the file's folder)."""
    ann_path = Path(annotation_file)
    data = json.loads(ann_path.read_text())
    image_root = Path(image_dir) if image_dir else ann_path.parent
    masks = coco_person_masks(data, category)
    out = SampleSet()
    for im in sorted(data["images"], key=lambda r: r["id"]):
        rgb = read_rgb(image_root / im["file_name"])
        out.add(rgb, masks[im["id"]], im["file_name"])
    return out


# ---------------------------------------------------------------- packed datasets

def _encode(arrays: list[np.ndarray], ext: str, params: list[int]) -> tuple[np.ndarray, np.ndarray]:
    blobs = []
    for a in arrays:
        if a.ndim == 3 and a.shape[2] == 3:
            a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
        elif a.ndim == 3 and a.shape[2] == 4:
            a = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(ext, a, params)
        if not ok:
            raise ValueError(f"cannot encode an array of shape {a.shape} as {ext}")
        blobs.append(buf.reshape(-1))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def _decode(data: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        img = cv2.imdecode(data[a:b], cv2.IMREAD_UNCHANGED)
        if img.ndim == 3 and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        out.append(img)
    return out


def save_pack(path: str | os.PathLike, samples: SampleSet, jpeg_quality: int = 92) -> None:
    """Write a SampleSet to one .npz (JPEG images, PNG masks and cut-outs; no pickled objects)."""
    jpg = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality]
    png = [int(cv2.IMWRITE_PNG_COMPRESSION), 9]
    arrays = {"format": np.frombuffer(PACK_FORMAT.encode(), np.uint8)}
    arrays["img_data"], arrays["img_off"] = _encode(samples.images, ".jpg", jpg)
    arrays["mask_data"], arrays["mask_off"] = _encode([to_levels(m) for m in samples.masks], ".png", png)
    arrays["names"] = np.asarray(samples.names, dtype=np.str_)
    arrays["groups"] = np.asarray(samples.groups, dtype=np.str_)
    cut_rgba = [np.dstack([rgb, alpha]) for rgb, alpha in samples.cutouts]
    arrays["cut_data"], arrays["cut_off"] = _encode(cut_rgba, ".png", png)
    arrays["bg_data"], arrays["bg_off"] = _encode(samples.backgrounds, ".jpg", jpg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_pack(path: str | os.PathLike) -> SampleSet:
    """Read a file written by `save_pack`."""
    with np.load(path, allow_pickle=False) as z:
        if bytes(z["format"]).decode() != PACK_FORMAT:
            raise ValueError(f"{path}: not a {PACK_FORMAT} file")
        images = _decode(z["img_data"], z["img_off"])
        masks = _decode(z["mask_data"], z["mask_off"])
        out = SampleSet()
        for img, m, name, group in zip(images, masks, z["names"].tolist(), z["groups"].tolist()):
            out.add(img, to_label(m), name, group)
        out.cutouts = [(c[..., :3].copy(), c[..., 3].copy()) for c in _decode(z["cut_data"], z["cut_off"])]
        out.backgrounds = _decode(z["bg_data"], z["bg_off"])
    return out


def load_samples(source: str | os.PathLike, coco_images: str | os.PathLike | None = None) -> SampleSet:
    """Load a folder (images/ + masks/), a COCO .json, or a packed .npz, chosen by what `source` is."""
    p = Path(source)
    if p.is_dir():
        return load_folder(p)
    if p.suffix == ".json":
        return load_coco(p, coco_images)
    if p.suffix == ".npz":
        return load_pack(p)
    raise ValueError(f"{p}: expected a folder with images/ and masks/, a COCO .json or a packed .npz")


def split_indices(groups: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Reproducible train/val split by seed; all samples of one group land on the same side."""
    unique = sorted(set(groups))
    if val_fraction <= 0 or len(unique) < 2:
        return list(range(len(groups))), []
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    val_groups = {unique[i] for i in order[:n_val]}
    train = [i for i, g in enumerate(groups) if g not in val_groups]
    val = [i for i, g in enumerate(groups) if g in val_groups]
    return train, val
