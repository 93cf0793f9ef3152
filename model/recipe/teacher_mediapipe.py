"""MediaPipe selfie-segmentation teacher (mediapipe 0.10.21, Apache-2.0), run in .venv-mediapipe:
    .venv-mediapipe/bin/python teacher_mediapipe.py IN_DIR OUT_DIR
reads every PNG in IN_DIR and writes its person probability (uint8, 0..255) to OUT_DIR under the same name.
"""
import sys
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np


def main(in_dir: str, out_dir: str) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as model:
        for path in sorted(Path(in_dir).glob("*.png")):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            prob = model.process(rgb).segmentation_mask
            cv2.imwrite(str(Path(out_dir) / path.name), np.clip(prob * 255, 0, 255).astype(np.uint8))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
