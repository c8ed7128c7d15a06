"""The training loop: one function that reads top to bottom, single-process or under torchrun.

A run folder holds ``config.toml`` (the resolved :class:`TrainConfig`, itself a valid config: rerun
``maskdn train RUN/config.toml`` to resume), ``log.csv`` (iteration, lr, loss, patches, elapsed_s,
val_psnr), ``state.pt`` (the full training state, replaced atomically every ``save_every``
iterations), ``tb/`` (TensorBoard events, when installed), ``best.safetensors`` (the EMA weights with
the best validation PSNR, when validating) and, at the end, ``model.safetensors`` (the final EMA
weights with their config and training record).

Running the same config on the same folder resumes from ``state.pt`` and ends with exactly the
weights of an uninterrupted run: batches, noise and masks are pure functions of (seed, iteration),
and the state holds everything else. A config that differs in anything but :data:`MAY_CHANGE_ON_RESUME` fields
is refused. Under ``torchrun`` every process trains on its slice of the global batch through
DistributedDataParallel; only rank 0 logs, validates and saves.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..datasets import Sample
from ..devices import available_memory, warn_if_bf16_is_slow
from ..errors import MaskdnError, check_int, first_line
from ..fastpath.runtime import keep_freed_memory
from ..generalization import model_method, run_bench
from ..io import atomic_write
from ..model import MaskedSwinIR
from ..weights import save_model
from . import distributed
from .checkpoint import STATE, find_state, load_state, rng_states, save_state, set_rng_states, training_record
from .config import MAY_CHANGE_ON_RESUME, TrainConfig, to_toml
from .data import (Batches, PatchSampler, batch_loader, data_fingerprint, load_clean_images, load_validation_set,
                   sample_seed, split_holdout)
from .ema import EMA
from .step import train_step

LOG_HEADER = ["iteration", "lr", "loss", "patches", "elapsed_s", "val_psnr"]
_ATTENTION = 1  # stream id of the attention-mask seeds, apart from the data seeds (seed, it, j)


def learning_rate(cfg: TrainConfig, it: int) -> float:
    """The lr of iteration ``it`` (pure in ``it``): linear warm-up, then the config's schedule.

    ``constant``: ``lr``; ``multistep``: ``lr·gamma^k`` after ``k`` milestones; ``cosine``: from ``lr``
    down to ``min_lr_ratio·lr`` at the last iteration; ``wsd`` (warmup–stable–decay): ``lr`` until the
    last ``cooldown`` iterations, which decay it linearly to ``lr/cooldown`` at the last one (0 after it).
    The wsd schedule is that of Hu et al. 2024 (MiniCPM); the others are as in the paper's recipe
    (Chen et al. CVPR 2023, Adam on the L1 loss).

    Args:
        cfg: The run's config (``lr``, ``warmup``, ``schedule`` and that schedule's fields).
        it: The iteration, 0-based (iteration ``it`` is the ``it+1``-th optimizer step).

    Returns:
        The learning rate, in ``[0, lr]``.
    """
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        start = cfg.stable_until()
        return cfg.lr if it < start else cfg.lr * max(0, cfg.iterations - it) / cfg.cooldown
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(it >= m for m in cfg.milestones)
    t = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def validate(model: MaskedSwinIR, pairs: list, seed: int, device: torch.device) -> float:
    """Mean PSNR of one seeded pass of ``model`` (masks as at test time) over ``(noisy, clean)`` pairs.

    The pairs are scored by the evaluator, :func:`maskdn.generalization.run_bench` (in memory, as
    ready-made noisy inputs): one float32 pass per image under a generator on ``device`` freshly
    seeded with ``seed`` (the same for every image), PSNR on 8-bit RGB levels
    (:func:`maskdn.metrics.psnr`, as BasicSR/KAIR).

    Args:
        model: The model to score (its train/eval mode is restored afterwards), on ``device``.
        pairs: ``[(noisy, clean)]`` float ``[3, h, w]`` tensors in [0, 1], from
            :func:`maskdn.train.data.load_validation_set`.
        seed: Seeds the attention masks of every pass.
        device: Where the model runs.

    Returns:
        The mean PSNR in dB over the pairs (their sum divided by their number, in order).

    Raises:
        MaskdnError: ``pairs`` is empty, or a noisy input the model cannot take.
    """
    samples = [Sample(str(i), clean, noisy) for i, (noisy, clean) in enumerate(pairs)]
    records = run_bench([("validation", samples)], [model_method(model, "model", [1], device=device)], [], None,
                        seed=seed, passes=1, progress=False, device=device, lpips=False, with_ssim=False)
    scores = [r["psnr"] for r in records]
    return sum(scores) / len(scores)


class TrainingStopped(MaskdnError):
    """A run stopped on request (SIGTERM, Ctrl-C or its time limit) after saving its state; rerunning resumes it.

    Not a failure: ``maskdn train`` prints the one-line message without ``error:`` and exits with
    128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C, the shell's convention for a process
    ended by a signal), or 0 at the time limit.

    Attributes:
        signal: The signal's name (``"SIGTERM"``, ``"SIGINT"``), or None at the time limit.
    """

    def __init__(self, message: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.signal = signal


class _StopRequest:
    """Turns SIGTERM and SIGINT into a request the loop honours at the next iteration boundary.

    Only in the main thread of a single process (a DDP rank must not leave its group alone); a second
    signal while a request is pending acts as usual (Ctrl-C twice interrupts at once).
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._saved: dict = {}
        if threading.current_thread() is not threading.main_thread() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}


def _on_this_device(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """An optimizer state saved on another kind of device, with this machine's implementation.

    Adam's param groups carry ``fused`` (True where the run last ran on CUDA, None on CPU), and
    ``load_state_dict`` takes the saved groups' settings and places ``step`` by them. A state moving
    between CPU and CUDA (the campaign's runs between a CPU machine and a GPU session) gets the flag of
    the optimizer built here, so each machine runs its own implementation; they differ by rounding only.
    """
    fused = opt.param_groups[0].get("fused")
    groups = [dict(g, fused=fused) if "fused" in g else g for g in saved["param_groups"]]
    return {**saved, "param_groups": groups}


def _device_time_before(before: TrainConfig, elapsed: float) -> dict[str, float]:
    """Training seconds by kind of device for a state saved before states recorded them (2026-12-01):
    all of ``elapsed`` on the device its config names, ``"unknown"`` where that was ``auto``."""
    kind = "unknown" if before.device == "auto" else torch.device(before.device).type
    return {kind: elapsed} if elapsed else {}


def _check_resumable(cfg: TrainConfig, before: TrainConfig, iteration: int, out: Path) -> None:
    """Refuse to resume the run in ``out`` (at ``iteration``) with ``cfg`` unless it computes the same run."""
    changed = cfg.changed(before)
    if not changed or cfg.extends(before, iteration):
        return
    if set(changed) <= {"iterations", "cooldown"}:
        if cfg.schedule != "wsd":
            why = "only a wsd run can change its length"
        elif cfg.stable_until() < iteration:
            why = f"the run is already at iteration {iteration}, past where the new length ends its stable lr"
        else:
            why = f"the lr of iterations already done would change (at {iteration}, a cool-down had begun)"
        raise MaskdnError(f"{out}: cannot change {', '.join(changed)} on resume: {why}; use a new folder")
    raise MaskdnError(f"{out}: holds a run with a different config ({', '.join(changed)}); "
                      "use a new folder or the run's own config.toml")


def cooldown(source: str | Path, iterations: int, out: str | Path, progress: bool = True, time_limit: float = 0.0,
             **settings) -> Path:
    """Branch a cool-down off the wsd run ``source`` (folder or state file) into ``out`` and train it.

    The branch starts from a copy of the run's current state (and of its ``log.csv`` rows up to that
    iteration and its ``best.safetensors``) and trains ``iterations`` more with the lr decaying
    linearly to 0 (``cooldown = iterations``), then writes ``out/model.safetensors``, its export. The run itself is only read, so it continues later as if the branch never happened. A
    branch interrupted part-way resumes from ``out`` when called again. ``settings`` sets
    :data:`MAY_CHANGE_ON_RESUME` fields (threads, device, …) of the branch.

    Args:
        source: The wsd run: its folder or its ``state.pt``.
        iterations: The cool-down's length in iterations (an integer >= 1).
        out: The branch's run folder (not the run's own).
        progress: Show a progress bar.
        time_limit: As for :func:`train` (the branch then stops unfinished, with no export).
        **settings: :data:`MAY_CHANGE_ON_RESUME` fields of the branch.

    Returns:
        The path of the exported EMA weights, ``out/model.safetensors``.

    Raises:
        TrainingStopped: SIGTERM, Ctrl-C or ``time_limit``; the branch's state was saved first.
        MaskdnError: ``source`` is not a wsd run, is already in its cool-down, or ``out`` is the run's
            own folder; ``iterations`` is not an integer >= 1; ``settings`` holds other fields; no
            readable state in ``source``; or any error of :func:`train`.
    """
    import dataclasses

    path = find_state(source)
    state = load_state(path)
    cfg = TrainConfig.from_dict(state["config"], str(path))
    it = state["iteration"]
    if cfg.schedule != "wsd":
        raise MaskdnError(f"{source}: a cool-down branches off a wsd run, not a {cfg.schedule} one")
    if it > cfg.stable_until() or (cfg.cooldown and it == cfg.stable_until() and it):
        raise MaskdnError(f"{source}: already in its cool-down at iteration {it}; branch from the main run")
    check_int("cool-down length", iterations)
    dest = Path(out)
    if dest.resolve() == path.parent.resolve():
        raise MaskdnError(f"{out}: is the run's own folder; give the branch a new one")
    unknown = set(settings) - MAY_CHANGE_ON_RESUME
    if unknown:
        raise MaskdnError(f"cool-down: only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} may be set, not {', '.join(sorted(unknown))}")
    branch = dataclasses.replace(cfg, out=str(dest), iterations=it + iterations, cooldown=iterations, **settings)
    if not (dest / STATE).exists():
        dest.mkdir(parents=True, exist_ok=True)
        # The branch's folder tells its whole history: the run's log rows up to the branch point, and
        # the best weights its inherited best validation PSNR refers to. The state goes last: it marks
        # the branch as created.
        for name in ("log.csv", "best.safetensors"):
            if (path.parent / name).is_file():
                with atomic_write(dest / name) as tmp:
                    shutil.copyfile(path.parent / name, tmp)
        # the branch resumes under its own config (maybe another device): its past seconds keep theirs
        device_time = state.get("device_time") or _device_time_before(cfg, state.get("elapsed", 0.0))
        save_state(dest / STATE, {**state, "config": branch.to_dict(), "device_time": device_time})
    return train(branch, progress, time_limit)


def step_memory_bytes(cfg: TrainConfig, world_size: int = 1) -> int:
    """Estimated peak memory of one training step of ``cfg`` in one process, in bytes.

    Activations kept for the backward pass dominate: about ``k`` bytes per patch pixel, per channel
    of the embedding, per Swin block, with ``k = 30 + 80 * (1 - attn_mask_ratio)`` (masked tokens skip
    most attention work), plus 1,000 bytes per patch pixel for the rest. Fitted to the measured peak
    RSS of float32 CPU steps (presets tiny, small and paper, batch 4–16 of 32²–64²: 5.7, 12.5 and
    62 kB per pixel at ratio 0.75, small 27.9 kB at ratio 0); the estimate is 2–18% above each.
    bf16 autocast and CUDA need less.

    Args:
        cfg: The training config (its model preset, ``batch_size``, ``patch_size``).
        world_size: Processes the global batch is split over.

    Returns:
        The estimate in bytes (activations plus weights, gradients and Adam moments).
    """
    mc = cfg.model_config()
    per_pixel = (30 + 80 * (1.0 - mc.attn_mask_ratio)) * mc.embed_dim * sum(mc.depths) + 1000
    batch = -(-cfg.batch_size // world_size)
    params = sum(p.numel() for p in MaskedSwinIR(mc).parameters())
    return int(batch * cfg.patch_size**2 * per_pixel + 5 * 4 * params)


def _check_fits(cfg: TrainConfig, dev: torch.device, world_size: int) -> None:
    """Refuse, before any work, a batch that cannot fit in the memory ``dev`` has free now."""
    free = available_memory(dev)
    need = step_memory_bytes(cfg, world_size)
    if free is not None and need > free:
        gib = 2**30
        raise MaskdnError(f"{cfg.out}: a training step of {cfg.batch_size} patches of {cfg.patch_size}² "
                          f"({cfg.preset} preset) needs about {need / gib:.1f} GiB, and {dev.type} has "
                          f"{free / gib:.1f} GiB available: lower batch_size or patch_size")


def _loss_values(losses: list) -> list[float]:
    """``losses`` as floats: the device tensors among them (unread, see ``train_step(sync=False)``) read
    in one transfer, in place of one host round trip per iteration."""
    where = [i for i, v in enumerate(losses) if isinstance(v, torch.Tensor)]
    if not where:
        return losses
    values = list(losses)
    for i, v in zip(where, torch.stack([losses[i] for i in where]).tolist()):
        values[i] = v
    return values


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in model.state_dict().values() if v.dtype.is_floating_point)


def _log_rows_until(path: Path, iteration: int) -> list[list[str]]:
    """Data rows of an existing ``log.csv`` up to ``iteration`` (none if there is no log)."""
    if iteration == 0 or not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and int(r[0]) <= iteration]


def _tensorboard(cfg: TrainConfig, out: Path, it: int):
    """A TensorBoard writer (events after ``it`` from an interrupted run purged), or None."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed, so no TensorBoard events are written "
                      "(pip install 'maskdn[tensorboard]', or set tensorboard = false)", stacklevel=3)
        return None
    return SummaryWriter(str(out / "tb"), purge_step=it)


def train(cfg: TrainConfig, progress: bool = True, time_limit: float = 0.0) -> Path:
    """Train (or resume) the run in ``cfg.out``; returns the path of the final EMA weights.

    Under torchrun (``WORLD_SIZE`` > 1) this process joins the group and leaves it at the end.
    Adam on the L1 loss with an EMA of the weights, as in the paper (Chen et al. CVPR 2023); batches,
    noise and masks are seeded via :func:`maskdn.seeding.derive_seed`, so a resumed run ends with the
    weights of an uninterrupted one.

    Off the CPU the loss is read only every ``log_every`` iterations (see
    :func:`maskdn.train.step.train_step`, ``sync``), batches are copied to the device without waiting,
    Adam runs fused, and ``compile = true`` compiles the Swin blocks
    (:meth:`maskdn.model.MaskedSwinIR.compile_blocks`).

    Args:
        cfg: The run's config; ``data`` and ``out`` must be set.
        progress: Show a progress bar (rank 0 only).
        time_limit: Seconds after which this call stops at the next iteration, saves the state and raises
            :class:`TrainingStopped` (as SIGTERM does); 0: no limit. Counted from the call. Single-process
            runs only.

    Returns:
        ``cfg.out/model.safetensors``, the final EMA weights (written by rank 0).

    Raises:
        TrainingStopped: SIGTERM or Ctrl-C, or ``time_limit`` reached; the state was saved first.
        MaskdnError: ``data`` or ``out`` unset; unreadable training or validation images; the folder
            in use by another run; a saved run with a different config or changed training images,
            or an incomplete state; weights that became NaN/inf or a diverged step; an ``init`` whose
            architecture differs; a ``time_limit`` under torchrun.
    """
    if not cfg.data or not cfg.out:
        raise MaskdnError("set the training images and the run folder (--data and --out, or data and out in the config)")
    keep_freed_memory()  # fresh activation buffers would page-fault every step (docs/performance.md)
    deadline = time.monotonic() + time_limit if time_limit > 0 else math.inf
    own_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = distributed.setup(cfg.device)
    try:
        with contextlib.ExitStack() as lock:
            return _train(cfg, ctx, progress, lock, deadline)
    finally:
        if own_group:
            distributed.teardown()


@contextlib.contextmanager
def _folder_lock(out: Path):
    """Hold an exclusive lock on the run folder ``out`` (created) while a run uses it (POSIX ``flock``).

    Raises:
        MaskdnError: another process holds it (naming its pid), or the folder cannot be created.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / ".lock", "a+")
    except OSError as e:
        raise MaskdnError(f"{out}: cannot create the run folder ({first_line(e)})") from None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        handle.close()
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MaskdnError(f"{out}: in use by another training run ({holder}); "
                              "wait for it to stop or use another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield


def _load_init(model: MaskedSwinIR, init: str) -> None:
    """Copy the weights of ``init`` (zoo name or file) into ``model``; the architectures must match."""
    from ..weights import load_model

    source = load_model(init)
    masking = {"attn_mask_ratio": 0.0, "attn_mask_at_eval": True}
    theirs, ours = source.config.to_dict() | masking, model.config.to_dict() | masking
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in ours if theirs[k] != ours[k])
        raise MaskdnError(f"init {init}: architecture differs from the configured preset ({diff})")
    model.load_state_dict(source.state_dict())


def _train(cfg: TrainConfig, ctx: distributed.Context, progress: bool, lock: contextlib.ExitStack,
           deadline: float = math.inf) -> Path:
    out, dev, main = Path(cfg.out), ctx.device, ctx.is_main
    on_cpu = dev.type == "cpu"  # elsewhere: no host round trip per step (loss read at log time), fused Adam
    if deadline < math.inf and ctx.world_size > 1:
        raise MaskdnError("a time limit is for single-process runs: under torchrun each process would stop "
                          "at another iteration")
    state_path = out / STATE
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # data first: a bad folder fails before anything is written
    data_id = data_fingerprint(split_holdout(cfg.data, cfg.holdout)[0])
    images = load_clean_images(cfg.data, cfg.holdout)
    _check_fits(cfg, dev, ctx.world_size)  # after the data is known good, before any patch is cut or file written
    sampler = PatchSampler(images, cfg.patch_size, cfg.noise,
                           cfg.input_mask_range if cfg.input_mask else None, cfg.seed)
    val_sets = None
    if main and (cfg.val_data or cfg.holdout):
        source, held = (cfg.val_data, 0) if cfg.val_data else (cfg.data, cfg.holdout)
        val_sets = {n: load_validation_set(source, n, cfg.seed, cfg.val_crop, cfg.val_limit, held) for n in cfg.val_noise}

    if main:  # one run per folder: a second process would silently replace the first one's state
        lock.enter_context(_folder_lock(out))

    # model, EMA, optimizer; then the saved state, if this folder holds a run
    torch.manual_seed(cfg.seed)
    model = MaskedSwinIR(cfg.model_config()).to(dev).train()
    if cfg.init and not state_path.exists():
        _load_init(model, cfg.init)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, **({} if on_cpu else {"fused": True}))
    it, elapsed, best_val, last_val, history = 0, 0.0, -math.inf, None, []
    device_time: dict[str, float] = {}  # seconds of training by kind of device, before this process
    losses: list[float] = []  # losses since the last log row; saved, so a resumed row averages the same
    if state_path.exists():
        state = load_state(state_path)
        try:
            before = TrainConfig.from_dict(state["config"], str(state_path))
        except MaskdnError as e:
            raise MaskdnError(f"{out}: holds a run this version cannot resume ({e}); use a new folder") from None
        _check_resumable(cfg, before, state["iteration"], out)
        if state.get("data", data_id) != data_id:
            then = state["data"]
            raise MaskdnError(f"{out}: the training images in {cfg.data} changed since this run was saved "
                              f"({then['images']} images then, {data_id['images']} now, or their names or sizes); "
                              "resuming would not continue the same run: restore them or use a new folder")
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(_on_this_device(state["optimizer"], opt))
            set_rng_states(state["rng"])
            it, elapsed, last_val = state["iteration"], state["elapsed"], state["val_psnr"]
            device_time = dict(state.get("device_time") or _device_time_before(before, elapsed))
            best_val, history = state["best_val_psnr"], state.get("val_history", [])
            losses = list(state.get("log_losses", []))  # absent in states before 2026-11-30
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise MaskdnError(f"{state_path}: not a complete training state ({type(e).__name__}: "
                              f"{first_line(e)}); use a new folder") from None
        del state
    elapsed_before = elapsed
    if cfg.bf16 and main:
        warn_if_bf16_is_slow(dev, f"{out}: bf16 = true")
    net = model
    if ctx.world_size > 1:  # a collective: no process starts (and rank 0 saves nothing) before all loaded
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    if cfg.compile:  # regional: the blocks compile in place, names and the saved state unchanged
        model.compile_blocks()
    loader = batch_loader(Batches(sampler, cfg.batch_size, it, cfg.iterations, ctx.rank, ctx.world_size),
                          cfg.workers, cfg.seed)

    def last_good() -> str:
        return f"last good checkpoint kept in {state_path}" if state_path.exists() else "no checkpoint was written"

    def snapshot() -> dict:
        here = device_time.get(dev.type, 0.0) + elapsed - elapsed_before
        return {"iteration": it, "elapsed": elapsed, "val_psnr": last_val, "best_val_psnr": best_val,
                "world_size": ctx.world_size, "threads": torch.get_num_threads(),
                "device_time": device_time | {dev.type: here}}

    def save() -> None:
        if not _finite(model):
            raise MaskdnError(f"{out}: weights became NaN/inf at iteration {it}; stopped, "
                              f"last good checkpoint kept in {state_path}")
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                 "config": cfg.to_dict(), "rng": rng_states(), "val_history": history, "data": data_id,
                 "log_losses": _loss_values(losses), **snapshot()}
        save_state(state_path, state)

    # logs: CSV (rows after the last checkpoint are redone), TensorBoard, progress bar; rank 0 only
    log = tb = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.toml") as tmp:
            tmp.write_text(to_toml(cfg))
        kept = _log_rows_until(out / "log.csv", it)
        per_noise = [f"val_{n}" for n in cfg.val_noise] if len(cfg.val_noise) > 1 else []
        with atomic_write(out / "log.csv") as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([LOG_HEADER + per_noise, *kept])  # the old log stays whole until this is
        log = open(out / "log.csv", "a", newline="")
        writer = csv.writer(log)
        tb = _tensorboard(cfg, out, it)
    bar = tqdm(total=cfg.iterations, initial=it, disable=not (progress and main), unit="it", dynamic_ncols=True)
    start_it, t_start = it, time.perf_counter()
    t0 = t_start - elapsed
    stop = _StopRequest()
    try:
        for noisy, clean in loader:
            lr = learning_rate(cfg, it)
            for g in opt.param_groups:
                g["lr"] = lr
            gen = torch.Generator(dev).manual_seed(sample_seed(cfg.seed, it, ctx.rank, _ATTENTION))
            try:
                loss = train_step(net, opt, noisy.to(dev, non_blocking=True), clean.to(dev, non_blocking=True),
                                  generator=gen, bf16=cfg.bf16, grad_clip=cfg.grad_clip, ema=ema, sync=on_cpu)
            except FloatingPointError as e:
                raise MaskdnError(f"{out}: training diverged at iteration {it + 1} ({e}); "
                                  f"stopped, {last_good()}") from None
            it += 1
            elapsed = time.perf_counter() - t0
            bar.update(1)
            if not main:
                continue
            losses.append(loss)

            val = scores = None
            if val_sets and (it % cfg.val_every == 0 or it == cfg.iterations):
                scores = {n: validate(ema.module, pairs, cfg.seed, dev) for n, pairs in val_sets.items()}
                val = last_val = sum(scores.values()) / len(scores)
                history.append({"iteration": it, "patches": it * cfg.batch_size, "elapsed": round(elapsed, 1),
                                "lr": lr, "psnr": scores})
                if val > best_val:
                    best_val = val
                    save_model(ema.module, out / "best.safetensors", training=training_record(cfg, snapshot()))
            out_of_time = time.monotonic() >= deadline
            if it % cfg.log_every == 0 or val is not None or it == cfg.iterations or out_of_time:
                losses = _loss_values(losses)
                if not all(math.isfinite(v) for v in losses):  # off the CPU the first look at these losses
                    bad = next(v for v in losses if not math.isfinite(v))
                    raise MaskdnError(f"{out}: training diverged between iterations {it - len(losses) + 1} and "
                                      f"{it} (loss {bad}); stopped, {last_good()}")
                mean_loss = sum(losses) / len(losses)
                cells = ["" if scores is None else f"{scores[n]:.3f}" for n in cfg.val_noise] if per_noise else []
                writer.writerow([it, f"{lr:.4e}", f"{mean_loss:.5f}", it * cfg.batch_size, f"{elapsed:.1f}",
                                 "" if val is None else f"{val:.3f}", *cells])
                log.flush()
                if tb is not None:
                    tb.add_scalar("train/loss", mean_loss, it)
                    tb.add_scalar("train/lr", lr, it)
                    for n, v in (scores or {}).items():
                        tb.add_scalar(f"val/psnr/{n}", v, it)
                rate = (it - start_it) * cfg.batch_size / max(time.perf_counter() - t_start, 1e-9)
                bar.set_postfix(loss=f"{mean_loss:.4f}", patches_s=f"{rate:.1f}", refresh=False)
                losses = []
            if it % cfg.save_every == 0 or it == cfg.iterations or stop.signal or out_of_time:
                save()
            if (stop.signal or out_of_time) and it < cfg.iterations:
                why = f"by {stop.signal}" if stop.signal else "at the time limit"
                raise TrainingStopped(f"{out}: stopped {why} at iteration {it}, state saved; "
                                      "rerun the same command to resume", stop.signal)
    finally:
        stop.restore()
        bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()

    path = out / "model.safetensors"
    if main:
        save_model(ema.module, path, training=training_record(cfg, snapshot()))
    return path


__all__ = ["LOG_HEADER", "TrainingStopped", "cooldown", "learning_rate", "train", "validate"]
