import numpy as np
import pytest

from humanseg_batch.pipeline.write import MaskVideoWriter, coco_rle, encode_png, mask_key
from mediagen import decode_coco_rle


@pytest.mark.parametrize("seed", range(6))
def test_coco_rle_round_trips(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(0, 5)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        mask[y:y + rng.integers(1, 40), x:x + rng.integers(1, 40)] = 255
    if seed == 5:
        mask[:] = 255                      # starts with person: the first (background) run is 0
    assert np.array_equal(decode_coco_rle(coco_rle(mask), h, w), mask)


def test_known_coco_string():
    # 2x2 mask with only the bottom-right pixel set: column-major runs 3 background, 1 person
    mask = np.array([[0, 0], [0, 255]], np.uint8)
    assert coco_rle(mask) == "31"


def test_mask_video_round_trip_is_lossless():
    import io

    import av

    rng = np.random.default_rng(0)
    masks = [(rng.random((30, 40)) > 0.5).astype(np.uint8) * 255 for _ in range(5)]
    writer = MaskVideoWriter(40, 30)
    assert [writer.add(m) for m in masks] == list(range(5))
    data = writer.finish()
    with av.open(io.BytesIO(data)) as c:
        back = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert all(np.array_equal(a, b) for a, b in zip(masks, back)) and len(back) == 5
    writer2 = MaskVideoWriter(40, 30)
    for m in masks:
        writer2.add(m)
    assert writer2.finish() == data          # bit-exact: the same masks give the same file


def test_mask_video_of_any_width_reads_back_the_same_in_opencv(tmp_path):
    """Widths that are not a multiple of 8 (the frame is packed 8 pixels a byte); OpenCV stands in for
    the common tools a user reads the masks with."""
    import cv2

    rng = np.random.default_rng(1)
    for w, h in [(37, 21), (1, 1), (130, 9)]:
        masks = [(rng.random((h, w)) > 0.6).astype(np.uint8) * 255 for _ in range(3)]
        writer = MaskVideoWriter(w, h)
        for m in masks:
            writer.add(m)
        path = tmp_path / f"m{w}x{h}.mov"
        path.write_bytes(writer.finish())
        cap = cv2.VideoCapture(str(path))
        back = [cap.read()[1] for _ in masks]
        cap.release()
        assert all(b is not None and np.array_equal(b[:, :, 0], m) for b, m in zip(back, masks)), (w, h)


def test_png_and_keys():
    assert encode_png(np.zeros((3, 4), np.uint8))[:8] == b"\x89PNG\r\n\x1a\n"
    assert mask_key("a/b/photo.jpg") != mask_key("c/photo.jpg")
