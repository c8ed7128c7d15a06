"""A minimal, resumable training loop around :func:`~maskdn.train.step.train_step`.

One run folder holds ``config.json`` (the resolved :class:`TrainConfig`), ``log.csv``, ``state.pt`` (the
latest full training state: model, EMA, optimizer, iteration and RNG state, written atomically) and,
at the end, ``model.safetensors`` (the EMA weights with config and training record). Running the same
config on the same folder resumes from ``state.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import MaskdnError
from ..io import atomic_write
from ..model import MaskedSwinIR, preset
from ..weights import save_model
from .data import PatchSampler, load_clean_images
from .ema import EMA
from .step import StepConfig, train_step


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. ``attn_mask_ratio=None`` keeps the preset's ratio."""

    data: str
    out: str
    preset: str = "small"
    attn_mask_ratio: float | None = None
    input_mask: bool = True
    input_mask_range: tuple[float, float] = (0.8, 0.9)
    sigma: float = 15.0
    patch_size: int = 48
    batch_size: int = 16
    iterations: int = 2000
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    bf16: bool = True
    seed: int = 0
    threads: int | None = None
    save_every: int = 200
    log_every: int = 10

    def model_config(self):
        overrides = {} if self.attn_mask_ratio is None else {"attn_mask_ratio": self.attn_mask_ratio}
        return preset(self.preset, **overrides)

    def step_config(self) -> StepConfig:
        return StepConfig(
            sigma=self.sigma,
            input_mask_range=tuple(self.input_mask_range) if self.input_mask else None,
            grad_clip=self.grad_clip,
            bf16=self.bf16,
        )


def learning_rate(cfg: TrainConfig, it: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio·lr`` at the last iteration (pure in ``it``)."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    t = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(t, 1.0)))


def _log_rows_until(path: Path, iteration: int) -> list[list[str]]:
    """Data rows of an existing ``log.csv`` up to ``iteration`` (none if there is no log)."""
    if iteration == 0 or not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and int(r[0]) <= iteration]


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the path of the exported EMA weights."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    saved_cfg = out / "config.json"
    cfg_dict = dataclasses.asdict(cfg)
    if saved_cfg.exists():
        before = json.loads(saved_cfg.read_text())
        changed = sorted(k for k in cfg_dict if k not in ("threads",) and json.dumps(before.get(k)) != json.dumps(cfg_dict[k]))
        if changed and (out / "state.pt").exists():
            raise MaskdnError(f"{out}: holds a run with a different config ({', '.join(changed)}); use a new folder")
    with atomic_write(saved_cfg) as tmp:
        tmp.write_text(json.dumps(cfg_dict, indent=2))

    torch.manual_seed(cfg.seed)
    model = MaskedSwinIR(cfg.model_config()).train()
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    it, elapsed = 0, 0.0
    state_path = out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        it, elapsed = state["iteration"], state["elapsed"]

    sampler = PatchSampler(load_clean_images(cfg.data), cfg.patch_size)
    step_cfg = cfg.step_config()
    log_path = out / "log.csv"
    kept = _log_rows_until(log_path, it)  # rows logged after the last checkpoint are redone
    log = open(log_path, "w", newline="")
    writer = csv.writer(log)
    writer.writerow(["iteration", "lr", "loss", "patches", "elapsed_s"])
    writer.writerows(kept)

    def save_state() -> None:
        state = {
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "iteration": it, "elapsed": elapsed, "config": cfg_dict,
        }
        with atomic_write(state_path) as tmp:
            torch.save(state, tmp)

    bar = tqdm(total=cfg.iterations, initial=it, disable=not progress, unit="it", dynamic_ncols=True)
    running = None
    t0 = time.perf_counter() - elapsed
    try:
        while it < cfg.iterations:
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, it)
            clean = sampler.sample(cfg.batch_size, gen)
            try:
                loss = train_step(model, opt, clean, step_cfg, gen, ema)
            except FloatingPointError as e:
                raise MaskdnError(f"{out}: training diverged at iteration {it} ({e}); last good state kept in {state_path}") from None
            it += 1
            elapsed = time.perf_counter() - t0
            running = loss if running is None else 0.95 * running + 0.05 * loss
            if it % cfg.log_every == 0 or it == cfg.iterations:
                writer.writerow([it, f"{learning_rate(cfg, it - 1):.3e}", f"{loss:.5f}", it * cfg.batch_size, f"{elapsed:.1f}"])
                log.flush()
                bar.set_postfix(loss=f"{running:.4f}", patches_s=f"{it * cfg.batch_size / max(elapsed, 1e-9):.1f}")
            bar.update(1)
            if it % cfg.save_every == 0 or it == cfg.iterations:
                save_state()
    finally:
        bar.close()
        log.close()

    record = {
        "preset": cfg.preset,
        "data": Path(cfg.data).name,
        "noise": f"gaussian:{cfg.sigma:g}",
        "input_mask": list(cfg.input_mask_range) if cfg.input_mask else None,
        "attn_mask_ratio": cfg.model_config().attn_mask_ratio,
        "iterations": it,
        "batch_size": cfg.batch_size,
        "patch_size": cfg.patch_size,
        "patches_seen": it * cfg.batch_size,
        "lr": cfg.lr,
        "bf16": cfg.bf16,
        "wall_time_s": round(elapsed, 1),
        "threads": torch.get_num_threads(),
    }
    return save_model(ema.module, out / "model.safetensors", training=record)
