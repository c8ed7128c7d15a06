"""Devices: a user's device name as a ``torch.device`` this PyTorch can use (or one clear line), and where a model lives."""

from __future__ import annotations

import functools
import platform
import warnings

import torch

from .errors import MaskdnError


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` named by ``device``, checked against what this PyTorch build and machine have.

    Args:
        device: A ``torch.device`` or a name PyTorch accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ``"mps"``, ...).

    Returns:
        The device.

    Raises:
        MaskdnError: ``"--device NAME: ..."`` for a name PyTorch does not know, or a CUDA/MPS device
            this build or machine does not have (e.g. a CPU-only PyTorch).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise MaskdnError(f"--device {device}: not a device name (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise MaskdnError(f"--device {device}: {why}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MaskdnError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise MaskdnError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise MaskdnError(f"--device {device}: maskdn runs on cpu, cuda or mps, not {dev.type}")
    return dev


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module without either.

    Args:
        module: Any ``torch.nn.Module`` (e.g. a :class:`~maskdn.model.MaskedSwinIR`).

    Returns:
        The ``torch.device`` its tensors are on (a model is assumed to live on one device).
    """
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def on_device(module: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    """``module`` itself when it is on ``device`` (or ``device`` is None), else a copy of it moved there.

    The caller's module is never moved: ``Module.to`` moves in place, which would pull a caller's CUDA
    model onto the CPU behind their back.

    Args:
        module: The module (a model in eval or training mode; the copy keeps the mode).
        device: Where it should run; None: where it is. Checked by :func:`resolve_device`.

    Returns:
        ``module``, or a deep copy on ``device``.

    Raises:
        MaskdnError: ``device`` is not usable here (:func:`resolve_device`).
    """
    if device is None:
        return module
    want, have = resolve_device(device), module_device(module)
    if want.type == have.type and (want.index is None or want.index == have.index):
        return module
    import copy

    return copy.deepcopy(module).to(want)


def available_memory(device: str | torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can take now, or None where this is not known.

    Args:
        device: A device (checked by :func:`resolve_device`).

    Returns:
        CUDA: the free memory ``torch.cuda.mem_get_info`` reports. CPU: ``MemAvailable`` of
        ``/proc/meminfo`` (Linux's estimate of memory available without swapping), else free physical
        pages from ``os.sysconf``; None on other systems and devices (callers then skip their check).
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool | None:
    """Whether this x86 CPU computes in bfloat16 natively (AVX512-BF16 or AMX), as oneDNN sees it.

    Returns:
        True or False on x86-64; None where it is not known (other architectures, or a PyTorch
        without the oneDNN query ``torch.ops.mkldnn._is_mkldnn_bf16_supported``).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def warn_if_bf16_is_slow(device: str | torch.device, setting: str) -> None:
    """Warn (``UserWarning``) that bfloat16 autocast on ``device`` is slower than float32 here: a CPU
    without bfloat16 units emulates it (measured on an AVX2 CPU: a ``small``-preset training step 5.6×
    and a 256×384 forward 4–9× slower than float32). Nothing on GPUs or CPUs that have them.

    Args:
        device: Where the autocast runs.
        setting: How the user turned it on, named in the message (e.g. ``"--bf16"``, ``"bf16 = true"``).
    """
    if torch.device(device).type == "cpu" and cpu_has_bf16_units() is False:
        warnings.warn(f"{setting}: this CPU has no bfloat16 units (AVX512-BF16 or AMX), so bfloat16 autocast "
                      "runs several times slower than float32 here; turn it off", stacklevel=3)


__all__ = ["available_memory", "cpu_has_bf16_units", "module_device", "on_device", "resolve_device",
           "warn_if_bf16_is_slow"]
