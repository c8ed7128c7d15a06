"""The CPU fast path: the default attention path (``"fast"``) of :class:`maskdn.model.MaskedSwinIR`.

It computes the same function as the literal path of the authors' code (tests hold them to 1e-4),
laid out for a CPU:

* :mod:`.block`: the Swin block's fast path: attention branch, MLP on oneDNN, and without autograd
  the whole block in cache-sized groups of windows;
* :mod:`.attention`: window attention without a token mask, and with one over the kept keys only
  (masked keys folded into one), with hand-written backward passes;
* :mod:`.kernels`: the fused C kernel of the kept-keys core (``csrc/kept_attention.c``), compiled and
  cached on first use (``MASKDN_CPU_KERNEL=0`` turns it off);
* :mod:`.linear`: float32 linear layers on oneDNN's matmul (``MASKDN_ONEDNN_LINEAR=0`` turns it off);
* :mod:`.runtime`: the allocator setting :func:`~.runtime.keep_freed_memory` and the checks that make
  the hand-written paths step aside (autocast, ``torch.compile``).

Its functions take the model's modules (weights) as arguments; nothing here imports
:mod:`maskdn.model`. Design and measurements: ``docs/performance.md``.
"""

from .attention import KeptOrder, KeyTables, attend_windows, kept_keys, key_tables, windows_by_kept_count
from .block import attention_branch, mlp, swin_block

__all__ = [
    "KeptOrder",
    "KeyTables",
    "attend_windows",
    "attention_branch",
    "kept_keys",
    "key_tables",
    "mlp",
    "swin_block",
    "windows_by_kept_count",
]
