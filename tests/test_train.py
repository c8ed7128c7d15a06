"""Training: configs, schedules, EMA, the step, deterministic data, the loop (resume, NaN stop,
validation), export and the CLI. The SIGKILL and DDP end-to-end tests are in test_train_e2e.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from PIL import Image

import maskdn
from maskdn.cli import main
from maskdn.errors import MaskdnError
from maskdn.geometry import dihedral, dihedral_inverse
from maskdn.model import MaskedSwinIR, ModelConfig, preset
from maskdn.train import EMA, TrainConfig, export, learning_rate, load_config, loop, shipped_configs, train, train_step
from maskdn.train.checkpoint import find_state, load_state
from maskdn.train.config import to_toml
from maskdn.train.data import INPUT_MASK_FILL, Batches, PatchSampler, batch_loader
from maskdn.weights import load_model, read_metadata


def make_images(folder, sizes=((40, 48), (33, 29), (12, 20)), seed=0):
    """Random RGB PNGs; the last default size is smaller than a 16×16 patch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    return make_images(tmp_path / "clean")


def _cfg(folder, out, **kw) -> TrainConfig:
    base = dict(data=str(folder), out=str(out), preset="tiny", patch_size=16, batch_size=2, iterations=4,
                warmup=2, save_every=2, log_every=1, bf16=False, seed=0, tensorboard=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- config ------------------------------------------------------------------------------------


def test_config_toml_round_trip_and_overrides(tmp_path):
    cfg = load_config("paper", {"data": "d", "out": "o", "lr": 2, "noise": ["gaussian:15", "poisson:2"]})
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float) and cfg.noise == ("gaussian:15", "poisson:2")
    assert (cfg.preset, cfg.patch_size, cfg.batch_size, cfg.schedule, cfg.iterations) == ("paper", 64, 64, "multistep", 200000)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert load_config(str(path), {"seed": 3}) == dataclasses.replace(cfg, seed=3)
    assert load_config(None) == TrainConfig()  # no file: the defaults
    base = load_config("baseline")
    assert base.attn_mask_ratio == 0.0 and not base.input_mask
    assert dataclasses.replace(base, attn_mask_ratio=0.75, input_mask=True) == load_config("paper")
    assert set(shipped_configs()) >= {"paper", "baseline", "cpu-masked-small", "cpu-baseline-small"}
    small = load_config("cpu-masked-small")
    assert (small.patch_size, small.batch_size, small.lr, small.warmup, small.schedule, small.min_lr_ratio,
            small.grad_clip, small.bf16, small.iterations, small.threads) == (48, 16, 1e-3, 100, "cosine", 0.01, 1.0, True, 8000, 1)
    assert tuple(small.input_mask_range) == (0.0, 0.9) and small.attn_mask_ratio == 0.75
    twin = load_config("cpu-baseline-small")  # the same recipe with both masks off
    assert dataclasses.replace(twin, attn_mask_ratio=0.75, input_mask=True, input_mask_range=small.input_mask_range) == small


@pytest.mark.parametrize("source, overrides, match", [
    ('preset = "tiny"\nlearning_rate = 1e-3\n', None, r"bad\.toml: unknown key 'learning_rate'"),
    ('lr = "fast"\n', None, r"bad\.toml: lr: expected float, got 'fast'"),
    ('input_mask_range = [0.8]\n', None, r"bad\.toml: input_mask_range: expected a list of 2"),
    ('input_mask_range = [0.9, 0.8]\n', None, r"bad\.toml: input_mask_range must satisfy 0 <= lo <= hi < 1, not \[0\.9, 0\.8\]"),
    ('noise = ["gaussian:15", "pink:3"]\n', None, r"bad\.toml: noise pink:3: unknown noise"),
    ('iterations = 1.5\n', None, r"bad\.toml: iterations: expected int"),
    ('patch_size = 0\n', None, r"bad\.toml: patch_size must be an integer >= 1, not 0"),
    ('lr = \n', None, r"bad\.toml: not valid TOML"),
    ('preset = "huge"\n', None, r"bad\.toml: unknown preset 'huge'"),
    ('schedule = "linear"\n', None, r"bad\.toml: schedule must be one of"),
    ("paper", {"batch_size": "x"}, r"--set batch_size: expected int, got 'x'"),
    ("paper", {"bogus": 1}, r"--set bogus: unknown key"),
    ("paper", {"grad_clip": -1}, r"grad_clip must be a number >= 0 \(0: no clipping\), not -1.0"),
    ("paper", {"min_lr_ratio": -5}, r"min_lr_ratio must be in \[0, 1\], not -5.0"),
    ("paper", {"gamma": float("nan")}, r"gamma must be in \(0, 1\] \(the factor of each lr step\), not nan"),
    ("paper", {"input_mask_range": [0.9, 0.8]}, r"paper\.toml with --set input_mask_range: input_mask_range must satisfy"),
    ("nosuch", None, r"nosuch: no such config file or shipped config \(shipped: .*paper"),
])
def test_config_errors_name_the_file_and_key(source, overrides, match, tmp_path):
    """A bad config (``source``: a shipped name or, with a newline, the text of bad.toml) or ``--set``
    override is one error naming the file or ``--set`` and the key."""
    if "\n" in source:
        (tmp_path / "bad.toml").write_text(source)
        source = tmp_path / "bad.toml"
    with pytest.raises(MaskdnError, match=match) as e:
        load_config(source, overrides)
    assert "\n" not in str(e.value)


def test_learning_rate_schedules():
    cos = TrainConfig(lr=1e-3, warmup=10, iterations=110, min_lr_ratio=0.0)
    assert learning_rate(cos, 0) == pytest.approx(1e-4)
    assert learning_rate(cos, 9) == pytest.approx(1e-3)
    assert learning_rate(cos, 10) == pytest.approx(1e-3)
    assert learning_rate(cos, 60) == pytest.approx(5e-4)
    assert learning_rate(cos, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(dataclasses.replace(cos, min_lr_ratio=0.01), 110) == pytest.approx(1e-5)
    const = TrainConfig(lr=2e-4, warmup=0, schedule="constant", iterations=100)
    assert [learning_rate(const, i) for i in (0, 50, 99)] == [2e-4] * 3
    paper = load_config("paper")
    assert learning_rate(paper, 0) == pytest.approx(1e-4)
    assert learning_rate(paper, 99_999) == pytest.approx(1e-4)
    assert learning_rate(paper, 100_000) == pytest.approx(5e-5)
    assert learning_rate(paper, 150_000) == pytest.approx(2.5e-5)
    assert learning_rate(paper, 199_999) == pytest.approx(6.25e-6)
    wsd = TrainConfig(lr=1e-3, warmup=10, schedule="wsd", iterations=1000)
    assert learning_rate(wsd, 0) == pytest.approx(1e-4)
    assert [learning_rate(wsd, i) for i in (10, 500, 999)] == [1e-3] * 3  # no cool-down: stable to the end
    cd = dataclasses.replace(wsd, iterations=1100, cooldown=100)
    assert learning_rate(cd, 999) == 1e-3 and learning_rate(cd, 1000) == pytest.approx(1e-3)
    assert learning_rate(cd, 1050) == pytest.approx(5e-4) and learning_rate(cd, 1099) == pytest.approx(1e-5)
    with pytest.raises(MaskdnError, match="cooldown applies to schedule \"wsd\" only"):
        TrainConfig(cooldown=10)
    with pytest.raises(MaskdnError, match=r"cooldown \(20\) must not exceed iterations \(10\)"):
        TrainConfig(schedule="wsd", cooldown=20, iterations=10)


# ---- EMA, step, augmentation --------------------------------------------------------------------


def test_ema_warms_up_and_tracks():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.1 * start + 0.9 * model.weight)
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
    gen = torch.Generator().manual_seed(0)
    noisy = (clean + torch.randn(clean.shape, generator=gen) * 15 / 255).clamp(0, 1)
    if masked:
        noisy = maskdn.input_mask(noisy, (0.8, 0.9), INPUT_MASK_FILL, gen)[0]
    losses = [train_step(model, opt, noisy, clean, generator=gen) for _ in range(40)]
    assert np.mean(losses[-5:]) < factor * np.mean(losses[:5])


def test_step_refuses_a_nan_loss_before_touching_weights():
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.full((1, 3, 8, 8), float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_step(model, opt, x, x.nan_to_num(0.5))
    assert _weights_equal(before, model.state_dict())


def test_dihedral_modes_are_distinct_and_invertible():
    x = torch.arange(12.0).view(1, 3, 4)
    outs = {tuple(dihedral(x, m).flatten().tolist()) for m in range(8)}
    assert len(outs) == 8
    assert all(torch.equal(dihedral_inverse(dihedral(x, m), m), x) for m in range(8))


# ---- data --------------------------------------------------------------------------------------


def test_samples_are_a_pure_function_of_seed_iteration_and_index():
    imgs = [torch.randint(0, 256, (3, 10, 7), dtype=torch.uint8), torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)]
    s = PatchSampler(imgs, 16, ["gaussian:15", "saltpepper:0.1"], (0.5, 0.6), seed=0)
    noisy, clean = s.batch(3, range(8))
    assert noisy.shape == clean.shape == (8, 3, 16, 16)
    assert 0 <= clean.min() and clean.max() <= 1
    again = PatchSampler(imgs, 16, ["gaussian:15", "saltpepper:0.1"], (0.5, 0.6), seed=0)
    n2, c2 = again.batch(3, range(4, 8))  # a slice, drawn alone, equals the same samples of the full batch
    assert torch.equal(n2, noisy[4:]) and torch.equal(c2, clean[4:])
    assert not torch.equal(s.batch(4, range(8))[1], clean)  # another iteration differs
    assert not torch.equal(PatchSampler(imgs, 16, seed=1).batch(3, range(8))[1], clean)  # another seed differs
    hidden = (noisy == INPUT_MASK_FILL).all(dim=1).float().mean(dim=(1, 2))
    assert ((hidden > 0.4) & (hidden < 0.7)).all()  # 50–60% of pixels hidden per sample
    visible = noisy.permute(1, 0, 2, 3)[:, (noisy != INPUT_MASK_FILL).all(dim=1)]
    assert 0 <= visible.min() and visible.max() <= 1  # clipped
    assert not torch.equal(visible, (visible * 255).round() / 255)  # not quantized


def test_noise_list_draws_each_spec():
    img = [torch.full((3, 32, 32), 128, dtype=torch.uint8)]
    s = PatchSampler(img, 8, ["gaussian:25", "saltpepper:0.5"], None)
    noisy, clean = s.batch(0, range(32))
    sp = ((noisy == 0) | (noisy == 1)).float().mean(dim=(1, 2, 3)) > 0.3
    assert 4 < int(sp.sum()) < 28  # both specs drawn, about half each
    assert torch.equal(clean, torch.full_like(clean, 128 / 255))


def test_worker_processes_give_the_same_batches(image_folder):
    from maskdn.train.data import load_clean_images

    s = PatchSampler(load_clean_images(image_folder), 16, ["gaussian:15"], (0.8, 0.9), seed=5)
    inline = list(batch_loader(Batches(s, 4, 2, 6), workers=0, seed=5))
    workers = list(batch_loader(Batches(s, 4, 2, 6), workers=2, seed=5))
    assert len(inline) == len(workers) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(inline, workers))
    assert torch.equal(inline[0][0], s.batch(2, range(4))[0])
    rank1 = list(batch_loader(Batches(s, 4, 2, 6, rank=1, world=2), workers=0, seed=5))
    assert torch.equal(rank1[0][1], inline[0][1][2:])
    with pytest.raises(MaskdnError, match="not divisible"):
        Batches(s, 5, 0, 1, rank=0, world=2)


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("not an image")
    with pytest.raises(MaskdnError, match="bad: no readable training image"):
        train(_cfg(bad, tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()  # nothing written before the data is known good
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MaskdnError, match="empty: no images"):
        train(_cfg(empty, tmp_path / "o2"), progress=False)
    assert main(["train", "paper", "--data", str(bad), "--out", str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskdn: error:") and "no readable training image" in err and "\n" not in err
    assert main(["train", "paper", "--out", str(tmp_path / "o4")]) == 1
    assert "set the training images" in capsys.readouterr().err


# ---- the loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["paper", "baseline", "cpu-masked-small", "cpu-baseline-small"])
def test_each_shipped_config_trains(name, image_folder, tmp_path):
    over = dict(data=str(image_folder), out=str(tmp_path / name), preset="tiny", patch_size=16, batch_size=4,
                iterations=2, save_every=1, workers=0, tensorboard=False, device="cpu")
    cfg = load_config(name, over)
    path = train(cfg, progress=False)
    state = load_state(tmp_path / name / "state.pt")
    assert state["iteration"] == 2 and state["config"] == cfg.to_dict()
    meta = read_metadata(path)
    assert meta["config"]["attn_mask_ratio"] == cfg.attn_mask_ratio
    assert meta["training"]["patches_seen"] == 8 and meta["training"]["schedule"] == cfg.schedule
    assert load_config(tmp_path / name / "config.toml") == cfg  # the saved config reruns the run


def test_compiled_training_computes_the_same_run(image_folder, tmp_path, monkeypatch):
    """compile=true compiles the Swin blocks in place (MaskedSwinIR.compile_blocks); the saved weights keep
    plain key names and match eager.

    Compiling is the cost, so this is one step of a one-block model without attention masking."""
    import maskdn.model

    one_block = ModelConfig(embed_dim=8, depths=(1,), num_heads=(2,), resi_connection="1conv")
    monkeypatch.setitem(maskdn.model.PRESETS, "tiny", one_block)
    compiled_nets, real_compile_blocks = [], MaskedSwinIR.compile_blocks

    def compile_spy(net, *args, **kwargs):
        compiled_nets.append(net)
        return real_compile_blocks(net, *args, **kwargs)

    monkeypatch.setattr(MaskedSwinIR, "compile_blocks", compile_spy)
    kw = dict(iterations=1, warmup=0, attn_mask_ratio=0.0)  # masked attention is data-dependent: many graphs
    eager = train(_cfg(image_folder, tmp_path / "eager", **kw), progress=False)
    compiled = train(_cfg(image_folder, tmp_path / "compiled", compile=True, **kw), progress=False)
    assert len(compiled_nets) == 1 and isinstance(compiled_nets[0], MaskedSwinIR)  # the trained model's blocks
    a, b = load_file(eager), load_file(compiled)
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert load_model(compiled).config == dataclasses.replace(one_block, attn_mask_ratio=0.0)


def test_resume_continues_and_refuses_a_changed_config(image_folder, tmp_path, monkeypatch):
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
    with pytest.raises(MaskdnError, match="different config.*lr"):
        train(_cfg(image_folder, tmp_path / "b", lr=5e-3), progress=False)
    resumed = train(_cfg(image_folder, tmp_path / "b", threads=1, log_every=2), progress=False)  # harmless changes

    assert _weights_equal(load_model(straight).state_dict(), load_model(resumed).state_dict())
    rec = read_metadata(resumed)["training"]
    assert rec["iterations"] == 4 and rec["patches_seen"] == 8 and rec["preset"] == "tiny"
    rows = [r.split(",") for r in (tmp_path / "b" / "log.csv").read_text().strip().splitlines()]
    assert rows[0] == loop.LOG_HEADER and [r[0] for r in rows[1:]] == ["1", "2", "4"]


def _nan_at(call: int, after: bool):
    """A train_step that poisons one weight with NaN at the given call (before or after the real step)."""
    calls = {"n": 0}
    real_step = loop.train_step

    def step(model, *args, **kwargs):
        calls["n"] += 1
        poison = calls["n"] == call
        if poison and not after:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        loss = real_step(model, *args, **kwargs)
        if poison and after:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return loss

    return step


@pytest.mark.parametrize("after, message, saved_at", [
    (False, "training diverged at iteration 5 \\(loss is nan\\); stopped, last good checkpoint kept", 4),
    (True, "weights became NaN/inf at iteration 4; stopped, last good checkpoint kept", 2),
])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(after, message, saved_at, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(loop, "train_step", _nan_at(5 if not after else 4, after))
    with pytest.raises(MaskdnError, match=message) as e:
        train(_cfg(image_folder, out, iterations=8), progress=False)
    assert "\n" not in str(e.value)
    state = load_state(out / "state.pt")
    assert state["iteration"] == saved_at
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["ema"]["module"].values())
    assert not (out / "model.safetensors").exists()


def test_validation_logs_psnr_and_keeps_the_best(image_folder, tmp_path):
    val = make_images(tmp_path / "val", sizes=((30, 40), (24, 24)), seed=1)
    cfg = _cfg(image_folder, tmp_path / "v", iterations=6, log_every=4, val_data=str(val), val_every=3,
               val_noise="poisson:2", val_crop=16, val_limit=1)
    train(cfg, progress=False)
    rows = [r.split(",") for r in (tmp_path / "v" / "log.csv").read_text().strip().splitlines()]
    assert rows[0] == ["iteration", "lr", "loss", "patches", "elapsed_s", "val_psnr"]
    by_it = {int(r[0]): r for r in rows[1:]}
    assert sorted(by_it) == [3, 4, 6] and by_it[4][5] == ""
    scores = [float(by_it[i][5]) for i in (3, 6)]
    assert all(0 < s < 60 for s in scores)
    best = read_metadata(tmp_path / "v" / "best.safetensors")["training"]
    assert best["val_psnr"] == pytest.approx(max(scores), abs=0.01) and best["val_noise"] == "poisson:2"
    assert best["iterations"] == (3 if scores[0] >= scores[1] else 6)
    # the logged PSNR is the EMA model's, one seeded pass on the center crop of the first image
    from maskdn.train.data import load_validation_set

    pairs = load_validation_set(val, "poisson:2", 0, crop=16, limit=1)
    assert pairs[0][0].shape == (3, 16, 16)
    final = load_model(tmp_path / "v" / "model.safetensors")
    assert loop.validate(final, pairs, 0, torch.device("cpu")) == pytest.approx(scores[1], abs=1e-3)


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is not None, reason="tensorboard installed")
def test_tensorboard_missing_is_said_once(image_folder, tmp_path):
    with pytest.warns(UserWarning, match=r"pip install 'maskdn\[tensorboard\]'") as record:
        train(_cfg(image_folder, tmp_path / "t", iterations=2, tensorboard=True), progress=False)
    assert sum("tensorboard" in str(w.message) for w in record) == 1


# ---- runs that grow: wsd, extension, cool-down branches, hold-out validation ----------------------


def _state_tensors(path) -> dict:
    state = load_state(path)
    flat = {f"model/{k}": v for k, v in state["model"].items()}
    flat |= {f"ema/{k}": v for k, v in state["ema"]["module"].items()}
    for i, st in state["optimizer"]["state"].items():
        flat |= {f"opt/{i}/{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)}
    return flat


def test_wsd_run_extended_in_two_pieces_equals_one_run(image_folder, tmp_path):
    kw = dict(schedule="wsd", warmup=2, save_every=100, attn_mask_ratio=0.5, input_mask_range=(0.0, 0.9))
    train(_cfg(image_folder, tmp_path / "one", iterations=7, **kw), progress=False)
    train(_cfg(image_folder, tmp_path / "two", iterations=3, **kw), progress=False)
    assert load_state(tmp_path / "two" / "state.pt")["iteration"] == 3
    train(_cfg(image_folder, tmp_path / "two", iterations=7, **kw), progress=False)  # raised on resume
    a, b = _state_tensors(tmp_path / "one" / "state.pt"), _state_tensors(tmp_path / "two" / "state.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a run whose lr depends on its length refuses a new length, naming why
    train(_cfg(image_folder, tmp_path / "cos", iterations=3, save_every=100), progress=False)
    with pytest.raises(MaskdnError, match="cannot change iterations on resume: only a wsd run can change its length"):
        train(_cfg(image_folder, tmp_path / "cos", iterations=7, save_every=100), progress=False)


def test_a_state_saved_on_cuda_resumes_with_this_machines_optimizer(image_folder, tmp_path):
    """A GPU session's state has Adam's ``fused`` flag set (the trainer fuses on CUDA); resumed on the CPU
    it runs the CPU's own Adam, so the run continues exactly as a CPU-only run (and the reverse, by
    the same rule, on CUDA)."""
    from maskdn.train.checkpoint import save_state

    kw = dict(schedule="wsd", warmup=2, save_every=100)
    train(_cfg(image_folder, tmp_path / "one", iterations=6, **kw), progress=False)
    train(_cfg(image_folder, tmp_path / "two", iterations=3, **kw), progress=False)
    state = load_state(tmp_path / "two" / "state.pt")
    for group in state["optimizer"]["param_groups"]:
        assert not group["fused"]
        group["fused"] = True  # as a GPU session saves it
    assert state["device_time"] == {"cpu": state["elapsed"]}
    gpu_s = state["elapsed"]
    state["device_time"] = {"cuda": gpu_s}  # its seconds were a GPU's
    save_state(tmp_path / "two" / "state.pt", state)
    train(_cfg(image_folder, tmp_path / "two", iterations=6, **kw), progress=False)
    a, b = _state_tensors(tmp_path / "one" / "state.pt"), _state_tensors(tmp_path / "two" / "state.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    after = load_state(tmp_path / "two" / "state.pt")
    assert not any(g["fused"] for g in after["optimizer"]["param_groups"])
    # the training time stays split by device: the GPU's seconds kept, this machine's added
    assert after["device_time"]["cuda"] == gpu_s
    assert after["device_time"]["cpu"] == pytest.approx(after["elapsed"] - gpu_s) and after["device_time"]["cpu"] > 0
    # a state from before device times were recorded: its seconds go to the device its config names
    del after["device_time"]
    after["elapsed"] = 1000.0
    save_state(tmp_path / "two" / "state.pt", after)
    train(_cfg(image_folder, tmp_path / "two", iterations=7, **kw), progress=False)
    resumed = load_state(tmp_path / "two" / "state.pt")
    assert resumed["device_time"] == {"cpu": pytest.approx(resumed["elapsed"])} and resumed["elapsed"] > 1000.0
    # ... also when a cool-down branches it under another device setting ("auto" here, cuda on a GPU)
    del resumed["device_time"]
    save_state(tmp_path / "two" / "state.pt", resumed)
    loop.cooldown(tmp_path / "two", 1, tmp_path / "two-cd", progress=False, device="auto")
    branch = load_state(tmp_path / "two-cd" / "state.pt")
    assert branch["device_time"] == {"cpu": pytest.approx(branch["elapsed"])}
    # and a run configured "auto" says it does not know
    auto = dataclasses.replace(TrainConfig.from_dict(branch["config"]), device="auto")
    assert loop._device_time_before(auto, 5.0) == {"unknown": 5.0} and loop._device_time_before(auto, 0.0) == {}


def test_cooldown_branch_leaves_the_run_untouched_and_exports(image_folder, tmp_path, capsys):
    kw = dict(schedule="wsd", warmup=2, save_every=100, iterations=4)
    run = tmp_path / "run"
    train(_cfg(image_folder, run, **kw), progress=False)
    before = (run / "state.pt").read_bytes()
    branch = tmp_path / "run-cd"
    assert main(["train", str(run), "--cooldown", "3", "--out", str(branch), "--set", "threads=1"]) == 0
    assert (run / "state.pt").read_bytes() == before  # byte-identical main state
    rec = read_metadata(branch / "model.safetensors")["training"]
    assert rec["iterations"] == 7 and rec["schedule"] == "wsd, cool-down 3"
    rows = [r.split(",") for r in (branch / "log.csv").read_text().strip().splitlines()[1:]]
    lrs = {int(r[0]): float(r[1]) for r in rows}
    assert [lrs[i] for i in (5, 6, 7)] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-3)  # log: 5 digits
    # the run continues as if the branch never happened: equal to one uninterrupted run
    train(_cfg(image_folder, run, **{**kw, "iterations": 6}), progress=False)
    train(_cfg(image_folder, tmp_path / "straight", **{**kw, "iterations": 6}), progress=False)
    a, b = _state_tensors(run / "state.pt"), _state_tensors(tmp_path / "straight" / "state.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # branching a branch, a non-wsd run, or into the run's own folder: one line each
    assert main(["train", str(branch), "--cooldown", "2", "--out", str(tmp_path / "x")]) == 1
    assert "already in its cool-down at iteration 7" in capsys.readouterr().err
    train(_cfg(image_folder, tmp_path / "cos", iterations=2), progress=False)
    assert main(["train", str(tmp_path / "cos"), "--cooldown", "2", "--out", str(tmp_path / "y")]) == 1
    assert "a cool-down branches off a wsd run, not a cosine one" in capsys.readouterr().err
    assert main(["train", str(run), "--cooldown", "2", "--out", str(run)]) == 1
    assert "is the run's own folder" in capsys.readouterr().err
    assert main(["train", str(run), "--cooldown", "2", "--out", str(tmp_path / "z"), "--set", "lr=1"]) == 1
    assert "only compile, device" in capsys.readouterr().err


def test_cooldown_branch_carries_the_runs_log_rows_and_best_weights(tmp_path):
    """A branch's folder tells its whole history: the run's log rows before the branch point, then its
    own, and a best.safetensors matching the best validation PSNR its state inherited."""
    data = make_images(tmp_path / "clean", sizes=((40, 48), (33, 29), (30, 40)))
    kw = dict(schedule="wsd", warmup=2, save_every=100, iterations=4, holdout=1, val_every=2, val_crop=16)
    run, branch = tmp_path / "run", tmp_path / "run-cd"
    train(_cfg(data, run, **kw), progress=False)
    run_best = (run / "best.safetensors").read_bytes()
    loop.cooldown(run, 2, branch, progress=False)
    rows = [r.split(",") for r in (branch / "log.csv").read_text().strip().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == [r.split(",") for r in (run / "log.csv").read_text().strip().splitlines()[1:]]
    hist = load_state(branch / "state.pt")["val_history"]
    assert [e["iteration"] for e in hist] == [2, 4, 6]
    branch_best = (branch / "best.safetensors").read_bytes()
    mean = [sum(e["psnr"].values()) / len(e["psnr"]) for e in hist]
    if mean[2] > max(mean[:2]):
        assert branch_best != run_best  # the branch's own weights beat the run's best
    else:
        assert branch_best == run_best  # still the run's best, now in the branch's folder too


def test_holdout_images_are_never_trained_on_and_validate_under_each_noise(tmp_path):
    data = make_images(tmp_path / "clean", sizes=((40, 48), (33, 29), (30, 40), (24, 24)))
    cfg = _cfg(data, tmp_path / "h", iterations=2, holdout=2, val_every=2, val_crop=16,
               val_noise=["gaussian:15", "saltpepper:0.02"], batch_size=8)
    from maskdn.train.data import load_clean_images, split_holdout

    train_paths, held = split_holdout(data, 2)
    assert [p.name for p in train_paths] == ["0.png", "1.png"] and [p.name for p in held] == ["2.png", "3.png"]
    assert len(load_clean_images(data, 2)) == 2
    sampler = PatchSampler(load_clean_images(data, 2), 16, seed=0)
    assert {tuple(img.shape) for img in sampler.images} == {(3, 40, 48), (3, 33, 29)}
    train(cfg, progress=False)
    header, *rows = [r.split(",") for r in (tmp_path / "h" / "log.csv").read_text().strip().splitlines()]
    assert header == loop.LOG_HEADER + ["val_gaussian:15", "val_saltpepper:0.02"]
    assert rows[-1][0] == "2" and float(rows[-1][5]) == pytest.approx((float(rows[-1][6]) + float(rows[-1][7])) / 2, abs=2e-3)
    hist = load_state(tmp_path / "h" / "state.pt")["val_history"]
    assert [e["iteration"] for e in hist] == [2] and set(hist[0]["psnr"]) == {"gaussian:15", "saltpepper:0.02"}
    assert hist[0]["patches"] == 16
    rec = read_metadata(tmp_path / "h" / "best.safetensors")["training"]
    assert rec["val_data"] == "clean, last 2 held out" and rec["val_noise"] == "gaussian:15, saltpepper:0.02"
    assert rec["val_psnr"] == pytest.approx(sum(hist[0]["psnr"].values()) / 2, abs=0.01)
    with pytest.raises(MaskdnError, match="holdout 4 leaves no training image"):
        train(_cfg(data, tmp_path / "h2", holdout=4), progress=False)


# ---- export and the CLI ------------------------------------------------------------------------


def test_export_loads_and_denoises(image_folder, tmp_path, capsys):
    cfg = _cfg(image_folder, tmp_path / "run", iterations=3, attn_mask_ratio=0.5, input_mask_range=(0.8, 0.9))
    train(cfg, progress=False)
    out = tmp_path / "released.safetensors"
    assert main(["export", str(tmp_path / "run"), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = maskdn.load_model(out)
    assert model.config == cfg.model_config()
    ema = load_state(tmp_path / "run" / "state.pt")["ema"]["module"]
    assert _weights_equal(model.state_dict(), ema)
    rec = read_metadata(out)["training"]
    assert rec["iterations"] == 3 and rec["patches_seen"] == 6 and rec["noise"] == "gaussian:15"
    assert rec["input_mask"] == [0.8, 0.9] and rec["attn_mask_ratio"] == 0.5 and rec["data"] == "clean"
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    den = maskdn.denoise(img, model)
    assert den.shape == img.shape and den.dtype == np.uint8
    assert export(tmp_path / "run" / "state.pt", tmp_path / "b.safetensors").exists()
    (tmp_path / "norun").mkdir()
    assert main(["export", str(tmp_path / "norun"), "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "norun: no checkpoint (state.pt) in this folder" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_train_lists_configs_and_applies_overrides(image_folder, tmp_path, capsys):
    assert main(["train", "--list"]) == 0
    assert capsys.readouterr().out.split() == shipped_configs()
    cfg_file = tmp_path / "mine.toml"
    cfg_file.write_text('preset = "tiny"\npatch_size = 16\nbatch_size = 2\niterations = 2\nbf16 = false\n'
                        'tensorboard = false\ndevice = "cpu"\n')
    args = ["train", str(cfg_file), "--data", str(image_folder), "--out", str(tmp_path / "r"),
            "--set", "noise=[\"gaussian:25\", \"poisson:1\"]", "--set", "lr=0.002", "--set", "input_mask_range=[0.5,0.6]"]
    assert main(args) == 0
    saved = load_config(tmp_path / "r" / "config.toml")
    assert saved.noise == ("gaussian:25", "poisson:1") and saved.lr == 0.002 and saved.input_mask_range == (0.5, 0.6)
    assert main(["train", str(cfg_file), "--set", "lr=fast"]) == 1
    assert "--set lr: expected float, got 'fast'" in capsys.readouterr().err
    assert math.isclose(read_metadata(tmp_path / "r" / "model.safetensors")["training"]["lr"], 0.002)


@pytest.mark.parametrize("text, seconds", [("3600", 3600), ("90s", 90), ("45m", 2700), ("2h", 7200),
                                           ("1h30m", 5400), ("0.5h", 1800), (" 2H ", 7200)])
def test_durations(text, seconds):
    from maskdn.cli import parse_duration

    assert parse_duration(text, "--time-limit") == seconds


def test_cli_time_limit_stops_saves_and_resumes(image_folder, tmp_path, capsys):
    """--time-limit: the run stops at the first iteration past it with its state saved and exit 0, and
    the same command without it finishes the run; a malformed duration is one line before any work."""
    cfg_file = tmp_path / "mine.toml"
    cfg_file.write_text('preset = "tiny"\npatch_size = 16\nbatch_size = 2\niterations = 3\nbf16 = false\n'
                        'tensorboard = false\ndevice = "cpu"\nwarmup = 0\n')
    args = ["train", str(cfg_file), "--data", str(image_folder), "--out", str(tmp_path / "r")]
    for bad in ("soon", "0", "1d", "-5m", "h"):
        assert main([*args, f"--time-limit={bad}"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--time-limit {bad}: expected a positive duration" in err
    assert not (tmp_path / "r").exists()
    assert main([*args, "--time-limit", "0.001s"]) == 0
    assert "stopped at the time limit at iteration 1, state saved" in capsys.readouterr().err
    assert find_state(tmp_path / "r") is not None and not (tmp_path / "r" / "model.safetensors").exists()
    assert main(args) == 0 and (tmp_path / "r" / "model.safetensors").exists()


def test_init_starts_from_given_weights_and_checks_the_architecture(image_folder, tmp_path):
    from maskdn.model import MaskedSwinIR, preset
    from maskdn.weights import load_model, save_model

    torch.manual_seed(123)
    source = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0))
    save_model(source, tmp_path / "start.safetensors")
    path = train(_cfg(image_folder, tmp_path / "run", iterations=1, init=str(tmp_path / "start.safetensors"),
                      lr=1e-12, warmup=0, ema_decay=0.0), progress=False)
    trained = load_model(path).state_dict()
    for k, v in source.state_dict().items():
        assert torch.allclose(trained[k], v, atol=1e-6), k  # a 1e-12 step barely moves the given weights
    save_model(MaskedSwinIR(preset("small")), tmp_path / "other.safetensors")
    with pytest.raises(MaskdnError, match="architecture differs.*embed_dim 32 vs 24"):
        train(_cfg(image_folder, tmp_path / "run2", iterations=1, init=str(tmp_path / "other.safetensors")), progress=False)


# ---- nothing lost: locks, changed data, exports, logs --------------------------------------------


def test_a_run_folder_in_use_is_refused(image_folder, tmp_path):
    out = tmp_path / "run"
    with loop._folder_lock(out):
        with pytest.raises(MaskdnError, match=rf"{out}: in use by another training run \(pid \d+\); wait for it"):
            train(_cfg(image_folder, out), progress=False)
    assert not (out / "state.pt").exists()
    train(_cfg(image_folder, out, iterations=1), progress=False)  # free again once the holder is done


def test_resuming_over_changed_training_images_is_refused(image_folder, tmp_path):
    out = tmp_path / "run"
    train(_cfg(image_folder, out, iterations=2, schedule="wsd"), progress=False)
    assert load_state(out / "state.pt")["data"]["images"] == 3
    make_images(image_folder, sizes=((40, 48), (33, 29), (12, 20), (20, 20)))  # a fourth image appears
    with pytest.raises(MaskdnError, match=r"training images in .* changed since this run was saved \(3 images then, 4 now"):
        train(_cfg(image_folder, out, iterations=4, schedule="wsd"), progress=False)
    assert load_state(out / "state.pt")["iteration"] == 2


def test_export_refuses_to_replace_a_file_the_run_needs(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(image_folder, out, iterations=2), progress=False)
    for name in ("state.pt", "config.toml", "log.csv"):
        before = (out / name).read_bytes()
        assert main(["export", str(out), "-o", str(out / name)]) == 1
        assert f"{out / name}: is a file the run in {out} needs" in capsys.readouterr().err
        assert (out / name).read_bytes() == before
    assert main(["export", str(out), "-o", str(out / "weights.safetensors")]) == 0


def test_the_log_is_whole_on_disk_before_training_resumes(image_folder, tmp_path, monkeypatch):
    """A kill right after a resume must not leave log.csv empty: the kept rows are on disk before the
    first step runs (written to a temporary file and renamed), and new rows are appended."""
    out = tmp_path / "run"
    train(_cfg(image_folder, out, iterations=4, schedule="wsd"), progress=False)
    real_step, seen = loop.train_step, []

    def step(*args, **kwargs):
        seen.append((out / "log.csv").read_text())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    train(_cfg(image_folder, out, iterations=6, schedule="wsd"), progress=False)
    assert [r.split(",")[0] for r in seen[0].splitlines()] == ["iteration", "1", "2", "3", "4"]
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()] == ["iteration", *map(str, range(1, 7))]


def test_an_incomplete_state_file_is_one_line(image_folder, tmp_path):
    out = tmp_path / "run"
    train(_cfg(image_folder, out, iterations=2), progress=False)
    state = load_state(out / "state.pt")
    del state["optimizer"]
    torch.save(state, out / "state.pt")
    with pytest.raises(MaskdnError, match=r"state.pt: not a complete training state \(KeyError: 'optimizer'\); use a new folder"):
        train(_cfg(image_folder, out, iterations=2), progress=False)


def test_a_run_folder_resumes_itself_from_anywhere_and_says_why_it_cannot_shrink(image_folder, tmp_path, monkeypatch):
    run = tmp_path / "a" / "run"
    monkeypatch.chdir(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    train(_cfg(image_folder, "run", iterations=3, schedule="wsd"), progress=False)  # records out = "run"
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", str(run), "--set", "iterations=5"]) == 0
    assert load_state(run / "state.pt")["iteration"] == 5 and not (elsewhere / "run").exists()
    with pytest.raises(MaskdnError, match="already at iteration 5, past where the new length ends"):
        train(load_config(run, {"iterations": 4}), progress=False)


def test_the_first_log_row_after_a_resume_averages_what_it_says(image_folder, tmp_path, monkeypatch):
    """Checkpoints between log rows (save_every 3, log_every 2): the row at iteration 4 of a run killed at
    iteration 5 and resumed from iteration 3 averages iterations 3 and 4, as the uninterrupted run's does."""
    kw = dict(iterations=6, save_every=3, log_every=2)
    train(_cfg(image_folder, tmp_path / "a", **kw), progress=False)
    real_step, calls = loop.train_step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(image_folder, tmp_path / "b", **kw), progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    train(_cfg(image_folder, tmp_path / "b", **kw), progress=False)

    def losses(run):
        rows = [r.split(",") for r in (run / "log.csv").read_text().strip().splitlines()[1:]]
        return [(r[0], r[2]) for r in rows]

    assert [it for it, _ in losses(tmp_path / "a")] == ["2", "4", "6"]
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


@pytest.mark.parametrize("size", [dict(batch_size=10**8), dict(patch_size=100_000)])
def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(size, image_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(MaskdnError, match=r"run: a training step of .* needs about [\d.]+ GiB, and cpu has "
                                          r"[\d.]+ GiB available: lower batch_size or patch_size"):
        train(_cfg(image_folder, out, **size), progress=False)
    assert not out.exists()


def test_the_memory_estimate_grows_with_the_batch_and_falls_with_masking():
    small = loop.step_memory_bytes(_cfg("d", "o", preset="small", batch_size=16, patch_size=64))
    assert loop.step_memory_bytes(_cfg("d", "o", preset="small", batch_size=32, patch_size=64)) > 1.9 * small
    unmasked = loop.step_memory_bytes(_cfg("d", "o", preset="small", batch_size=16, patch_size=64, attn_mask_ratio=0))
    # measured peaks of these steps (float32, one CPU thread, 2026-11-30): 0.76 and 1.71 GiB; the
    # estimate errs high, but not by 2x
    assert 0.76 * 2**30 < small < 1.5 * 2**30 and 1.71 * 2**30 < unmasked < 3.4 * 2**30
