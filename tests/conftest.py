"""Shared fixtures: the read-only ../shared folder (conformance vectors, datasets) and tiny models."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from maskdn.fastpath import kernels
from maskdn.model import MaskedSwinIR, preset

REPO = Path(__file__).resolve().parents[1]


def campaign_script(name: str):
    """``campaign/NAME.py``, imported as its siblings import it (``campaign/`` is not a package): one
    ``campaign`` module for all, so that a test's monkeypatch of it reaches ``writeup`` and ``ship``."""
    sys.path.insert(0, str(REPO / "campaign"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
SHARED = Path(os.environ.get("MASKDN_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test models are tiny: threads gain nothing, and on a busy CPU each parallel op waits on a preempted thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HAS_C_COMPILER = bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))
"""Where there is a compiler the fused attention kernel must build: its tests run, not skip."""


@pytest.fixture(params=["kernel", "torch"])
def attention_core(request):
    """The fast path's kept-keys core two ways: the fused C kernel (maskdn.fastpath.kernels) and PyTorch ops."""
    if request.param == "kernel":
        if not HAS_C_COMPILER:
            pytest.skip("no C compiler on this machine")
        assert kernels.kernel_status() == "compiled"
    with kernels.disabled() if request.param == "torch" else contextlib.nullcontext():
        yield request.param


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test when it is not present on this machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("MASKDN_REQUIRE_SHARED"):  # CI: a missing ../shared is a failure, not a skip
            pytest.fail(f"{path} not present and MASKDN_REQUIRE_SHARED is set")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def tiny_model() -> MaskedSwinIR:
    """Deterministic tiny model (attention masking off) with seeded random weights."""
    torch.manual_seed(0)
    return MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)).eval()


@pytest.fixture
def tiny_masked_model() -> MaskedSwinIR:
    """Tiny model with the paper's 75% attention masking (stochastic at eval)."""
    torch.manual_seed(0)
    return MaskedSwinIR(preset("tiny")).eval()


@pytest.fixture
def tiny_weights(tmp_path):
    """A tiny masked model (seeded random weights) saved as a maskdn safetensors file, training record included."""
    from maskdn.weights import save_model

    torch.manual_seed(0)
    return save_model(MaskedSwinIR(preset("tiny")), tmp_path / "tiny.safetensors", training={"preset": "tiny"})
