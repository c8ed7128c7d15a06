"""maskdn: generalizable image denoising by masked image training (Chen et al., CVPR 2023).

The public surface::

    model = maskdn.load_model()                  # default zoo model, a zoo name, or a weights file
    out = maskdn.denoise(image, model, passes=4)  # numpy / PIL / torch in, the same type out
"""

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
