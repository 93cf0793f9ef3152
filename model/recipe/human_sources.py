"""Human-labelled person masks from public repositories, one reader per repository layout.

Every reader yields `Item`s whose `load()` returns the image file exactly as fetched and a
mask with 0 = background, 255 = person, 128 = unknown (the loss and the eval ignore it).
Only COCO *train2017* images are read: every COCO image's `coco_url` must name train2017
(`require_train2017`), so a val2017 image (an evaluation split) is refused, never used.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import Callable, Iterator

import cv2
import numpy as np

from human_git import GitTree

PERSON, UNKNOWN = 255, 128

# Pinned sources: (URL, commit). The commit is what DATA.tsv / EVAL.tsv record.
CCP = ("https://github.com/bearpaw/clothing-co-parsing", "fe34fb77721a9973fbae92c05f7f12b664d10110")
COCO128 = ("https://github.com/lightly-ai/coco128_yolo", "6d6f7a059ea63efffdbe48aca2d52c04d4c510e9")
MINICOCO = ("https://github.com/tikitong/minicoco", "e00ceccc8121a8885b5ccb6b9ecde54491e1aa74")

CCP_BAND = 0.05  # of the image height: the background known around a CCP subject (see ccp_mask)
CCP_LICENCE = ("repository Apache-2.0 (bearpaw/clothing-co-parsing); the photos' own rights "
               "are not stated")
# COCO's `licenses` table (the same 8 entries in every COCO 2017 JSON); the image's Flickr
# licence is its own, the COCO annotations are CC BY 4.0.
COCO_LICENCES = {1: "CC BY-NC-SA 2.0", 2: "CC BY-NC 2.0", 3: "CC BY-NC-ND 2.0", 4: "CC BY 2.0",
                 5: "CC BY-SA 2.0", 6: "CC BY-ND 2.0", 7: "No known copyright restrictions (Flickr Commons)",
                 8: "United States Government Work"}


def require_train2017(image: dict) -> None:
    """Refuse any COCO image that is not from train2017 (val/test splits are evaluation data)."""
    if "/train2017/" not in image.get("coco_url", ""):
        raise SystemExit(f"refusing COCO image {image.get('file_name')!r}: not from train2017 "
                         f"({image.get('coco_url')!r})")


def coco_licence(licence_id: int | None) -> str:
    image = (f"image: Flickr {COCO_LICENCES[licence_id]} (COCO licence id {licence_id})"
             if licence_id else "image: its own Flickr licence, listed in COCO "
             "instances_train2017.json (not at hand)")
    return f"{image}; labels: COCO CC BY 4.0"


@dataclass
class Labelled:
    image: bytes                 # the file as fetched (its sha256 goes into the TSVs)
    mask: np.ndarray             # HxW uint8: 0, 128, 255
    people: list[np.ndarray]     # one bool mask per fully labelled single person


@dataclass
class Item:
    name: str
    group: str                   # which split rule applies: ccp | coco | pennfudan
    people: bool                 # any person label at all (False: a person-free photo)
    source: str                  # URL@commit:path of the image
    licence: str
    load: Callable[[], Labelled]


def decode_image(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an image")
    return image


def _compose(shape, people: list[np.ndarray], unknown: list[np.ndarray]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    for region in unknown:
        mask[region] = UNKNOWN
    for person in people:    # a labelled person wins over an overlapping crowd region
        mask[person] = PERSON
    return mask


# --- Clothing Co-Parsing: MATLAB `groundtruth` label maps, person = any non-zero label ---
def ccp_items(tree: GitTree) -> Iterator[Item]:
    for mat_path in tree.list("annotations/pixel-level"):
        number = PurePosixPath(mat_path).stem
        photo = f"photos/{number}.jpg"
        yield Item(f"ccp_{number}", "ccp", True, tree.source(photo), CCP_LICENCE,
                   partial(_load_ccp, tree, mat_path, photo))


def _load_ccp(tree: GitTree, mat_path: str, photo: str) -> Labelled:
    import scipy.io  # only this source needs it

    labels = scipy.io.loadmat(io.BytesIO(tree.read(mat_path)))["groundtruth"]
    data = tree.read(photo)
    if decode_image(data).shape[:2] != labels.shape:
        raise ValueError(f"{photo}: label size {labels.shape} differs from the photo")
    person = labels != 0
    return Labelled(data, ccp_mask(person), [person])


def ccp_mask(person: np.ndarray) -> np.ndarray:
    """Person, a known-background band around it, unknown beyond.

    Only the main subject is labelled: about a third of the photos (half of the 60 held out, by
    eye) show other, unlabelled people, mostly small and blurred behind the subject. Calling them
    background would teach exactly the small-person misses the model must lose, so only a band
    of CCP_BAND of the image height around the subject counts as background.
    """
    band = max(3, round(CCP_BAND * person.shape[0]))
    near = cv2.dilate(person.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))).astype(bool)
    mask = np.full(person.shape, UNKNOWN, np.uint8)
    mask[near] = 0
    mask[person] = PERSON
    return mask


# --- lightly-ai/coco128_yolo: COCO panoptic PNGs (crowds included) for 100 train images ---
def coco128_items(tree: GitTree) -> Iterator[Item]:
    pan = json.loads(tree.read("panoptic_segmentation/annotations/panoptic_train2017.json"))
    images = {im["id"]: im for im in pan["images"]}
    with_masks = set()
    for ann in sorted(pan["annotations"], key=lambda a: a["file_name"]):
        im = images[ann["image_id"]]
        require_train2017(im)
        stem = PurePosixPath(im["file_name"]).stem
        with_masks.add(stem)
        segments = [s for s in ann["segments_info"] if s["category_id"] == 1]  # 1 = person
        photo = f"images/train2017/{stem}.jpg"
        png = f"panoptic_segmentation/annotations/panoptic_train2017/{ann['file_name']}"
        yield Item(f"coco_{stem}", "coco", bool(segments), tree.source(photo),
                   coco_licence(im["license"]), partial(_load_panoptic, tree, photo, png, segments))
    yield from _coco128_person_free(tree, with_masks)


def _coco128_person_free(tree: GitTree, with_masks: set[str]) -> Iterator[Item]:
    """The 28 images without a panoptic PNG: usable only where no person box exists."""
    for photo in tree.list("images/train2017"):
        stem = PurePosixPath(photo).stem
        if stem in with_masks:
            continue
        try:
            rows = tree.read(f"object_detection/labels/train2017/{stem}.txt").decode().splitlines()
        except FileNotFoundError:
            rows = []  # no label file: COCO lists no object in this image
        if any(row.split()[0] == "0" for row in rows if row.strip()):  # 0 = person here
            continue  # people with boxes only: no mask to learn from
        yield Item(f"coco_{stem}", "coco", False, tree.source(photo), coco_licence(None),
                   partial(_load_free, tree, photo))


def _load_free(tree: GitTree, photo: str) -> Labelled:
    data = tree.read(photo)
    return Labelled(data, np.zeros(decode_image(data).shape[:2], np.uint8), [])


def _load_panoptic(tree: GitTree, photo: str, png: str, segments: list[dict]) -> Labelled:
    data = tree.read(photo)
    rgb = decode_image(tree.read(png))[..., ::-1].astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]  # COCO panoptic id encoding
    people = [ids == s["id"] for s in segments if not s["iscrowd"]]
    crowds = [ids == s["id"] for s in segments if s["iscrowd"]]
    if decode_image(data).shape[:2] != ids.shape:
        raise ValueError(f"{png}: size differs from the photo")
    # Crowd regions mix people and the gaps between them: unknown, not person.
    return Labelled(data, _compose(ids.shape, people, crowds), people)


# --- a COCO-format instances JSON (polygons, uncompressed RLE for crowds) ---
def coco_json_items(tree: GitTree, json_path: str, image_dir: str) -> Iterator[Item]:
    coco = json.loads(tree.read(json_path))
    person_ids = {c["id"] for c in coco["categories"] if c["name"] == "person"}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann["category_id"] in person_ids:
            by_image.setdefault(ann["image_id"], []).append(ann)
    for im in sorted(coco["images"], key=lambda im: im["file_name"]):
        require_train2017(im)
        anns = by_image.get(im["id"], [])
        photo = f"{image_dir}/{im['file_name']}"
        yield Item(f"coco_{PurePosixPath(photo).stem}", "coco", bool(anns), tree.source(photo),
                   coco_licence(im.get("license")), partial(_load_coco_json, tree, photo, im, anns))


def _load_coco_json(tree: GitTree, photo: str, im: dict, anns: list[dict]) -> Labelled:
    data = tree.read(photo)
    shape = (im["height"], im["width"])
    if decode_image(data).shape[:2] != shape:
        raise ValueError(f"{photo}: size differs from its annotation")
    people = [_render(a["segmentation"], shape) for a in anns if not a["iscrowd"]]
    crowds = [_render(a["segmentation"], shape) for a in anns if a["iscrowd"]]
    return Labelled(data, _compose(shape, people, crowds), people)


def _render(segmentation, shape) -> np.ndarray:
    if isinstance(segmentation, dict):  # RLE, column-major runs starting with background
        counts = segmentation["counts"]
        if isinstance(counts, str):
            raise ValueError("compressed RLE is not supported; no pinned source uses it")
        h, w = segmentation["size"]
        flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
        return flat.reshape(w, h).T.copy()
    canvas = np.zeros(shape, np.uint8)
    for polygon in segmentation:
        points = np.round(np.asarray(polygon, np.float64).reshape(-1, 2) * 4).astype(np.int32)
        cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=2)  # quarter-pixel vertices
    return canvas.astype(bool)
