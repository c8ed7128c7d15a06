"""Training core: schedule, EMA, the masked step, data sampling, resume and export."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import maskdn.train.loop as loop
from maskdn.errors import MaskdnError
from maskdn.model import MaskedSwinIR, preset
from maskdn.train import EMA, StepConfig, TrainConfig, learning_rate, train, train_step
from maskdn.geometry import dihedral, dihedral_inverse
from maskdn.train.data import PatchSampler
from maskdn.weights import load_model, read_metadata


def test_learning_rate_warmup_and_cosine():
    cfg = TrainConfig(data="x", out="y", lr=1e-3, warmup=10, iterations=110, min_lr_ratio=0.0)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(5e-4)
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)


def test_ema_warms_up_and_tracks():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.1 * torch.tensor(0.0) + 0.9 * model.weight, atol=0.5)
    for _ in range(3000):
        ema.update(model)
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-3)


@pytest.mark.parametrize("masked, factor", [(False, 0.5), (True, 0.9)])
def test_step_decreases_loss_on_a_fixed_batch(masked, factor):
    """Smooth images a tiny model can learn; masked training converges more slowly (hence its factor)."""
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.75 if masked else 0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ramp = torch.linspace(0.1, 0.9, 16)
    clean = torch.stack([ramp[None, :, None].expand(3, 16, 16), ramp[None, None, :].expand(3, 16, 16),
                         torch.full((3, 16, 16), 0.3), torch.full((3, 16, 16), 0.7)])
    cfg = StepConfig(input_mask_range=(0.8, 0.9) if masked else None)
    gen = torch.Generator().manual_seed(0)
    losses = [train_step(model, opt, clean, cfg, gen) for _ in range(40)]
    assert np.mean(losses[-5:]) < factor * np.mean(losses[:5])


def test_dihedral_modes_are_distinct_and_invertible():
    x = torch.arange(12.0).view(1, 3, 4)
    outs = {tuple(dihedral(x, m).flatten().tolist()) for m in range(8)}
    assert len(outs) == 8
    assert all(torch.equal(dihedral_inverse(dihedral(x, m), m), x) for m in range(8))


def test_sampler_pads_small_images_and_is_seeded():
    imgs = [torch.randint(0, 256, (3, 10, 7), dtype=torch.uint8), torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)]
    s = PatchSampler(imgs, 16)
    a = s.sample(6, torch.Generator().manual_seed(0))
    b = s.sample(6, torch.Generator().manual_seed(0))
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "clean"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 48), (33, 29), (12, 20)]):  # the last is smaller than a patch
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _cfg(folder, out, **kw):
    base = dict(data=str(folder), out=str(out), preset="tiny", patch_size=16, batch_size=2, iterations=4,
                warmup=2, save_every=2, log_every=1, bf16=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_train_resume_equals_uninterrupted(image_folder, tmp_path, monkeypatch):
    straight = train(_cfg(image_folder, tmp_path / "a"), progress=False)

    calls = {"n": 0}
    real_step = loop.train_step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during iteration 3, after the checkpoint at iteration 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(image_folder, tmp_path / "b"), progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = train(_cfg(image_folder, tmp_path / "b"), progress=False)

    a, b = load_model(straight), load_model(resumed)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    rec = read_metadata(resumed)["training"]
    assert rec["iterations"] == 4 and rec["patches_seen"] == 8 and rec["preset"] == "tiny"
    rows = (tmp_path / "b" / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("iteration") and rows[-1].startswith("4,")


def test_resume_refuses_a_changed_config(image_folder, tmp_path):
    train(_cfg(image_folder, tmp_path / "r", iterations=2), progress=False)
    with pytest.raises(MaskdnError, match="different config.*lr"):
        train(_cfg(image_folder, tmp_path / "r", iterations=2, lr=5e-3), progress=False)


def test_no_readable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("not an image")
    with pytest.raises(MaskdnError, match="no readable training image"):
        train(_cfg(bad, tmp_path / "o"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MaskdnError, match="empty: no images"):
        train(_cfg(empty, tmp_path / "o2"), progress=False)


def test_config_masking_fields():
    cfg = TrainConfig(data="d", out="o", preset="tiny", attn_mask_ratio=0.0, input_mask=False)
    assert cfg.model_config().attn_mask_ratio == 0.0 and cfg.step_config().input_mask_range is None
    assert dataclasses.replace(cfg, attn_mask_ratio=None).model_config().attn_mask_ratio == 0.75
