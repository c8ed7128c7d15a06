"""maskdn: generalizable image denoising by masked image training (Chen et al., CVPR 2023).

The public surface::

    model = maskdn.load_model()                  # default zoo model, a zoo name, or a weights file
    out = maskdn.denoise(image, model, passes=4)  # numpy / PIL / torch in, the same type out
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:  # before PyTorch's OpenMP runtime reads it; a user's own setting wins
    # Threads that wait for work sleep instead of spinning. With the GNU OpenMP default, a forward pass
    # with 2 threads on a 2-core machine busy with other work took 4-45 s instead of 1.1 s (256x256,
    # baseline-small); on the idle machine the two policies measured the same (docs/performance.md).
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import MaskdnError
from .inference import denoise, denoise_files
from .masking import input_mask
from .model import MaskedSwinIR, ModelConfig, preset
from .noise import apply_noise
from .metrics import psnr
from .weights import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "MaskdnError",
    "MaskedSwinIR",
    "ModelConfig",
    "apply_noise",
    "denoise",
    "denoise_files",
    "input_mask",
    "load_model",
    "preset",
    "psnr",
    "save_model",
]
