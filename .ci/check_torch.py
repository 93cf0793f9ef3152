"""Fail an install whose torch is not the one constraints-cpu.txt pins (or not a CPU build); print what it is."""
import re
import sys
from pathlib import Path

import torch

pin = re.search(r"^torch==(\S+)", (Path(__file__).parents[1] / "constraints-cpu.txt").read_text(), re.M).group(1)
found = torch.__version__
print(f"torch {found} (cuda: {torch.version.cuda}) from {Path(torch.__file__).parent}")
if found != pin or torch.version.cuda is not None:
    sys.exit(f"expected the CPU build of torch {pin} (constraints-cpu.txt), found {found}: a pip call ran "
             "without `-c constraints-cpu.txt`, or this index has no CPU build (where PyPI's Linux wheel is "
             "a CUDA one, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index)")
