"""The one command of a GPU session: continue the training campaign's runs on the device for a wall-clock
budget, and leave what must come back in one folder; or, with ``--preset``, measure a preset and continue
the paper-size GPU runs.

    python benchmarks/gpu_run.py --prepare         # here, first: checks the campaign is stopped; data, wheels, size
    bash benchmarks/gpu_run.sh                     # on the GPU machine (installs the carried wheels, runs this)
    python benchmarks/gpu_run.py --apply DIR       # here, afterwards: the returned states into campaign/
    python benchmarks/gpu_run.py --device cpu --minutes 0.2 --out DIR --runs R   # the dry run (a test)
    python benchmarks/gpu_run.py --device cpu --preset tiny --minutes 0.2 --out DIR   # the --preset dry run

The campaign (the default; docs/gpu.md, "The campaign on a GPU"): ``campaign/masked`` and
``campaign/baseline`` (issue 17's runs, normally trained on CPUs by ``campaign/campaign.py``) resume
from their committed states, each trains on the device towards its next milestone (the run with less
to go first, each its share of the time by the iterations it lacks, or both at once with
``--parallel``); at the milestone, time allowing, it branches the milestone's cool-down as the CPU
campaign would and trains on towards the next one, else it stops there and the CPU process branches it;
the new states (and cool-down exports) come back. The run's
config is the committed one: float32, the same data (``gpu-carry/CBSD432``, all of CBSD432, linked
where the config names it), the same masks and seeds; only the device's arithmetic differs.

With ``--preset PRESET`` a session does, in order:

1. prints the machine: device name, torch and CUDA versions, free device memory, CPUs, and which of
   maskdn's dependencies are missing;
2. measures the preset's 768×512 forward and one training step of the masked run's batch (64 × 64²
   for ``paper``) in float32 and under bf16 autocast, eagerly and with
   :meth:`~maskdn.model.MaskedSwinIR.compile_blocks` (CUDA only: on CPU compiling takes minutes and did
   not pay, docs/performance.md); each setting is checked against float32 eager on the same weights,
   batch and masks, and the fastest correct one trains;
3. resumes ``campaign/gpu-PRESET-masked`` from its committed state (a fresh run when there is none) with
   :func:`maskdn.train.train` under a time limit, branches a cool-down off it
   (:func:`maskdn.train.cooldown`, sized to the time left) and copies the new state, the log and the
   cool-down's weights to ``--out``; then the same for ``campaign/gpu-PRESET-baseline`` when time allows;
4. prints one summary (throughput, iterations, validation PSNR, where each file went) and writes it as
   ``summary.json``.

Nothing under ``campaign/`` is written by a session: ``--apply`` does that here, from the returned folder.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the wall-clock budget counts from here, before the imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import tomllib  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "campaign"
CARRY = ROOT / "gpu-carry"  # git-ignored: what travels besides the repository (--prepare fills it)
DATA_SOURCE = ROOT.parent / "shared" / "data" / "CBSD432"
DATA = CARRY / "CBSD432-half"
"""The paper-size runs' images (``--preset``): CBSD432's last 16 in name order (held out for validation, as in
the campaign) and every second of the other 416 (208), 16.6 MB: all 432 (31.9 MB) would not travel beside the two
committed paper states (docs/gpu.md, "What travels")."""
HELD_OUT = 16
KINDS = ("masked", "baseline")
CAMPAIGN_DATA = CARRY / "CBSD432"
"""All of CBSD432 for the campaign's runs (31.9 MB): their state fingerprints the training images' names
and sizes, so a campaign run resumes on exactly the files it trained on."""
IMAGE = (512, 768)  # the forward's H, W on a GPU: the benchmark image of docs/performance.md
DRY_IMAGE = (96, 128)  # on CPU (the dry run): the same code on fewer windows
RETURN_LIMIT = 16 * 2**20  # bytes per file that come back from the GPU machine
TRAVEL_LIMIT = 64 * 2**20  # bytes of repository and carried files that travel to it
WHEELS = ("pypng==0.20220715.0",)
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64", "--platform", "any",
                "-d", str(CARRY / "wheels"), *WHEELS]
"""The one-time download of the wheels that the GPU image lacks (pure Python; docs/gpu.md)."""
GPU_TABLE = ("<!-- gpu runs: begin -->", "<!-- gpu runs: end -->")
MEASURE_TABLE = ("<!-- gpu measurements: begin -->", "<!-- gpu measurements: end -->")


def say(*parts: object) -> None:
    print(f"[{time.monotonic() - START:6.1f} s]", *parts, flush=True)


def run_name(preset: str, kind: str) -> str:
    return f"gpu-{preset}-{kind}"


def campaign_module():
    """``campaign/campaign.py`` (milestones; where a campaign run keeps its states; whether it runs)."""
    import importlib

    sys.path.insert(0, str(ROOT / "campaign"))  # imported as its siblings import it (campaign/ is not a package)
    try:
        return importlib.import_module("campaign")
    finally:
        sys.path.pop(0)


def link_data(data: str | Path, carried: Path = CAMPAIGN_DATA) -> bool:
    """Where ``data`` (a run's training folder as its config names it, e.g. the campaign's
    ``../shared/data/CBSD432``, relative to the working directory) is missing and ``carried`` is here,
    make ``data`` a link to ``carried``, so the run resumes with its own config; True if it linked."""
    path = Path(data)
    if os.path.lexists(path) or not carried.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(carried.resolve(), target_is_directory=True)
    return True


# --------------------------------------------------------------------------------------------------
# 1. The machine
# --------------------------------------------------------------------------------------------------


def requirements() -> list[str]:
    """maskdn's runtime requirements (distribution names), read from pyproject.toml."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for d in deps]


def machine(device: torch.device) -> dict:
    """What the session runs on: device, versions, free memory, CPUs, and missing requirements."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(name=torch.cuda.get_device_name(device), free_gib=round(free / 2**30, 1),
                    total_gib=round(total / 2**30, 1))
    else:
        info.update(name=platform.processor() or platform.machine())
    missing = []
    for dist in requirements():
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    info["missing"] = missing
    return info


# --------------------------------------------------------------------------------------------------
# 2. The measurement: float32 / bf16 × eager / compiled, each checked against float32 eager
# --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, best seconds of ``repeats`` calls after ``warmup`` more); with no
    repeats the first call is the best (the dry run: one call of each)."""
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    if not repeats:
        return first, first
    for _ in range(warmup):
        fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return first, best


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


TOLERANCE = {False: {"psnr": 60.0, "loss": 1e-4, "cos": 0.9999}, True: {"psnr": 30.0, "loss": 2e-2, "cos": 0.95}}
"""What a setting must meet against float32 eager, by bf16: forward PSNR (dB, output vs output), relative
difference of the first step's loss, cosine of the first step's gradients (all parameters as one vector).
float32 differs only by the order of operations; bf16 by its 8-bit mantissa."""


def measure(cfg, device: torch.device, compile_too: bool, budget_s: float, repeats: int,
            size: tuple[int, int] = IMAGE) -> list[dict]:
    """Time and check every setting on the preset of ``cfg`` (the masked run's config), a forward of one
    ``size`` (H, W) image and a training step of the run's batch; one dict per setting."""
    from maskdn.masking import input_mask
    from maskdn.model import MaskedSwinIR, preset
    from maskdn.train import train_step

    t_end = time.monotonic() + budget_s
    torch.manual_seed(0)
    init = MaskedSwinIR(preset(cfg.preset, attn_mask_ratio=cfg.attn_mask_ratio)).state_dict()
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, *size, generator=g).to(device)
    clean = torch.rand(cfg.batch_size, 3, cfg.patch_size, cfg.patch_size, generator=g)
    noisy, _ = input_mask((clean + 0.06 * torch.randn(clean.shape, generator=g)).clamp(0, 1), (0.8, 0.9), generator=g)
    clean, noisy = clean.to(device), noisy.to(device)
    settings = [(bf16, compiled) for compiled in (False, True) for bf16 in (False, True) if compile_too or not compiled]
    results, ref = [], None
    for bf16, compiled in settings:
        row = {"dtype": "bfloat16" if bf16 else "float32", "compile": compiled, "bf16": bf16}
        results.append(row)
        if (bf16 or compiled) and time.monotonic() > t_end:
            row["skipped"] = "out of measurement time"
            say(_measure_line(row))
            continue
        try:
            model = MaskedSwinIR(preset(cfg.preset, attn_mask_ratio=cfg.attn_mask_ratio)).to(device)
            model.load_state_dict(init)
            if compiled:
                model.compile_blocks()
            model.eval()

            def forward():
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    forward.out = model(image, generator=torch.Generator(device).manual_seed(2))

            row["forward_first_s"], row["forward_s"] = _timed(forward, device, 1 if compiled else 0, repeats)
            out = forward.out.float()
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))

            def step():
                step.loss = train_step(model, opt, noisy, clean, generator=torch.Generator(device).manual_seed(3),
                                       bf16=bf16, grad_clip=1.0, sync=False)

            row["train_first_s"], _ = _timed(step, device, 0, 0)
            grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
            loss = step.loss.item()
            row["train_step_s"] = _timed(step, device, 1, repeats)[1] if repeats else row["train_first_s"]
            row["patches_per_s"] = cfg.batch_size / row["train_step_s"]
            if not bf16 and not compiled:
                ref = {"out": out, "loss": loss, "grads": grads}
            if ref is None:
                raise RuntimeError("float32 eager, the yardstick, did not run")
            row["forward_psnr_db"] = _psnr(out, ref["out"])
            row["loss_rel"] = abs(loss - ref["loss"]) / abs(ref["loss"])
            row["grad_cos"] = torch.nn.functional.cosine_similarity(grads, ref["grads"], dim=0).item()
            tol = TOLERANCE[bf16]
            row["correct"] = (math.isfinite(loss) and row["forward_psnr_db"] >= tol["psnr"]
                              and row["loss_rel"] <= tol["loss"] and row["grad_cos"] >= tol["cos"])
        except Exception as e:  # a setting that fails on this machine is reported, not fatal
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        finally:
            model = opt = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        say(_measure_line(row))
    return results


def _measure_line(r: dict) -> str:
    name = f"{r['dtype']:8} {'compiled' if r['compile'] else 'eager':8}"
    if "skipped" in r or "error" in r:
        return f"{name} {r.get('skipped') or r.get('error')}"
    return (f"{name} forward {r['forward_s'] * 1e3:8.1f} ms (first {r['forward_first_s']:.1f} s)  "
            f"train step {r['train_step_s'] * 1e3:8.1f} ms (first {r['train_first_s']:.1f} s) "
            f"{r['patches_per_s']:8.1f} patches/s  vs float32 eager: {r['forward_psnr_db']:.1f} dB, "
            f"loss {r['loss_rel']:.1e}, grad cos {r['grad_cos']:.5f}  {'ok' if r['correct'] else 'REJECTED'}")


def choose(results: list[dict], bf16: bool | None) -> dict:
    """The fastest correct setting (of ``bf16`` when a run fixes it); float32 eager when none measured."""
    ok = [r for r in results if r.get("correct") and (bf16 is None or r["bf16"] == bf16)]
    if not ok:
        return {"bf16": bool(bf16), "compile": False, "dtype": "bfloat16" if bf16 else "float32", "measured": False}
    return min(ok, key=lambda r: r["train_step_s"])


# --------------------------------------------------------------------------------------------------
# 3. The runs
# --------------------------------------------------------------------------------------------------


def run_config(name: str, runs: Path, work: Path, device: torch.device, workers: int, campaign: bool = False):
    """``(cfg, state or None)``: the committed config with this machine's settings, and the committed state.
    A campaign run's missing data folder is linked to the carried copy (:func:`link_data`)."""
    from maskdn.errors import MaskdnError
    from maskdn.train import load_config
    from maskdn.train.checkpoint import load_state

    folder = runs / name
    cfg = load_config(folder / "config.toml")
    state = load_state(folder / "state.pt") if (folder / "state.pt").is_file() else None
    if campaign and link_data(cfg.data):
        say(f"{name}: {cfg.data} → {CAMPAIGN_DATA}")
    if not Path(cfg.data).is_dir():
        carried = CAMPAIGN_DATA if campaign else DATA
        raise MaskdnError(f"{cfg.data}: the training images of {name} are missing; run 'python benchmarks/gpu_run.py "
                          f"--prepare{'' if campaign else ' --preset PRESET'}' and carry {carried.relative_to(ROOT)} "
                          "(docs/gpu.md)")
    cfg = dataclasses.replace(cfg, out=str(work / name), device=device.type, workers=workers, tensorboard=False)
    return cfg, state


def continue_run(name: str, cfg, state: dict | None, seconds: float, cooldown_share: float, runs: Path,
                 cool_down: bool = True) -> dict:
    """Train ``name`` (committed in ``runs``) for about ``seconds`` or to ``cfg.iterations``: the run, then
    (``cool_down``) a cool-down branch sized to what is left."""
    from maskdn.train import TrainingStopped, cooldown, train
    from maskdn.train.checkpoint import load_state

    t_end = time.monotonic() + seconds
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start_it = start_elapsed = 0
    if state is not None:
        shutil.copyfile(runs / name / "state.pt", out / "state.pt")
        if (runs / name / "log.csv").is_file():
            shutil.copyfile(runs / name / "log.csv", out / "log.csv")
        start_it, start_elapsed = state["iteration"], state["elapsed"]
    record = {"run": name, "start_iteration": start_it, "bf16": cfg.bf16, "compile": cfg.compile,
              "batch_size": cfg.batch_size}
    say(f"{name}: {'resuming at iteration ' + str(start_it) if state else 'starting fresh'}, "
        f"{'bfloat16' if cfg.bf16 else 'float32'}{', compiled' if cfg.compile else ''}, {seconds:.0f} s")
    t_call = time.monotonic()
    try:
        train(cfg, progress=False, time_limit=max(1.0, seconds * (1 - cooldown_share)))
    except TrainingStopped:
        pass
    after = load_state(out / "state.pt")
    it, elapsed = after["iteration"], after["elapsed"]
    overhead = time.monotonic() - t_call - (elapsed - start_elapsed)  # loading, workers, compiling: again for the branch
    rate = (it - start_it) / max(elapsed - start_elapsed, 1e-9)  # iterations per second of training
    record.update(iteration=it, patches=it * cfg.batch_size, train_s=round(elapsed - start_elapsed, 1),
                  patches_per_s=round(rate * cfg.batch_size, 1))
    history = after.get("val_history") or []
    if history:
        record["run_val"] = {"iteration": history[-1]["iteration"], "psnr": history[-1]["psnr"]}
    # the cool-down: 5% of the run (as the campaign's), fewer if the time left allows fewer
    left = t_end - time.monotonic() - overhead
    n = max(1, min(round(0.05 * it), int(rate * left * 0.8)))  # at least one: there is always an export
    if it > 0 and cool_down:
        branch = out.with_name(f"{name}-cd")
        settings = {"device": cfg.device, "workers": cfg.workers, "compile": cfg.compile}
        say(f"{name}: iteration {it}; cool-down of {n} iterations")
        try:  # a safety net: sized to fit, the branch ends well before this limit
            weights = cooldown(out, n, branch, progress=False, time_limit=max(left, 0) + overhead + 30, **settings)
            record["cooldown_weights"] = str(weights)
            cd = load_state(branch / "state.pt")
            record["cooldown"] = n
            if cd.get("val_history"):
                record["cooldown_val"] = cd["val_history"][-1]["psnr"]
        except TrainingStopped as e:
            say(f"{name}: the cool-down did not finish in time, no export ({e})")
    return record


def deliver(record: dict, work: Path, dest: Path) -> None:
    """Copy the run's state, log and cool-down weights to ``dest`` (each within the return limit)."""
    name = record["run"]
    files = {f"{name}-state.pt": work / name / "state.pt", f"{name}-log.csv": work / name / "log.csv"}
    if "cooldown_weights" in record:
        files[f"{name}-cooldown.safetensors"] = Path(record.pop("cooldown_weights"))
    record["files"] = {}
    for target, source in files.items():
        size = source.stat().st_size
        tmp = dest / f".{target}.tmp"  # a command killed mid-copy leaves no half file under the real name
        shutil.copyfile(source, tmp)
        tmp.replace(dest / target)
        record["files"][target] = size
        if size > RETURN_LIMIT:
            say(f"WARNING: {target} is {size / 2**20:.1f} MiB, over the {RETURN_LIMIT / 2**20:.0f} MiB that come back")


def strict_float32(device: torch.device) -> None:
    """On CUDA, float32 means float32: no TF32 in matmuls and convolutions (the checks and the campaign's
    float32 runs rely on it)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def session(a: argparse.Namespace) -> int:
    from maskdn.devices import resolve_device
    from maskdn.errors import MaskdnError

    total_end = START + a.total_minutes * 60
    device = resolve_device(a.device)
    dest = Path(a.out or os.environ.get("OUT") or "")
    if not str(dest) or str(dest) == ".":
        raise MaskdnError("give --out DIR (or set OUT): where the states, logs and weights go")
    dest.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # the runs' configs name their data relative to the repository root
    info = machine(device)
    say(f"machine: {info['name']} ({info['device']}), torch {info['torch']}, CUDA {info['cuda']}, "
        f"python {info['python']}, {info['cpus']} CPUs"
        + (f", {info['free_gib']} of {info['total_gib']} GiB free" if "free_gib" in info else ""))
    say("missing requirements: " + (", ".join(info["missing"]) or "none"))
    strict_float32(device)

    work = Path(a.work or tempfile.mkdtemp(prefix="maskdn-gpu-"))
    workers = a.workers if a.workers is not None else (0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2)))
    campaign = a.preset is None
    names = list(KINDS) if campaign else [run_name(a.preset, k) for k in KINDS]
    if not (a.runs / names[0] / "config.toml").is_file():
        raise MaskdnError(f"{a.runs / names[0] / 'config.toml'}: no such run (the campaign's are campaign/masked and "
                          "campaign/baseline, the GPU runs campaign/gpu-PRESET-KIND)")
    if campaign:
        records, failed = campaign_session(a, [n for n in names if (a.runs / n / "config.toml").is_file()],
                                           total_end, work, dest, device, workers, info)
        return finish(a, info, [], None, records, failed, dest, work)
    configs = {n: run_config(n, a.runs, work, device, workers) for n in names if (a.runs / n / "config.toml").is_file()}

    repeats = a.repeats if a.repeats is not None else (3 if device.type == "cuda" else 0)
    masked_cfg = configs[names[0]][0]
    if masked_cfg.threads:
        torch.set_num_threads(masked_cfg.threads)
    size = IMAGE if device.type == "cuda" else DRY_IMAGE
    say(f"measuring preset {masked_cfg.preset}: forward {size[1]}×{size[0]}, "
        f"training step {masked_cfg.batch_size} × {masked_cfg.patch_size}²")
    results = measure(masked_cfg, device, device.type == "cuda" and not a.no_compile, a.measure_minutes * 60,
                      repeats, size)

    budget = min((a.minutes or 7.0) * 60, total_end - time.monotonic() - a.reserve_seconds)
    shares = [a.masked_share, 1 - a.masked_share] if len(configs) > 1 else [1.0]
    records = []
    for name, share in zip((n for n in names if n in configs), shares):
        cfg, state = configs[name]
        # each run its planned share; only the session's end cuts it (a 570 s command must end in time)
        seconds = min(budget * share, total_end - time.monotonic() - a.reserve_seconds)
        if seconds < a.min_run_seconds:
            say(f"{name}: skipped, {seconds:.0f} s left (under {a.min_run_seconds:.0f} s)")
            continue
        fixed = None if state is None else state["config"]["bf16"]  # bf16 is part of what a run computes
        pick = choose(results, fixed)
        cfg = dataclasses.replace(cfg, bf16=pick["bf16"], compile=pick["compile"])
        try:
            record = continue_run(name, cfg, state, seconds, a.cooldown_share, a.runs)
        except Exception as e:  # one failed run must not cost the other its turn, nor the summary
            if isinstance(e, MaskdnError) or not cfg.compile:
                raise
            say(f"{name}: failed compiled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "again without compiling")
            left = total_end - time.monotonic() - a.reserve_seconds
            record = continue_run(name, dataclasses.replace(cfg, compile=False), state, min(seconds, left),
                                  a.cooldown_share, a.runs)
        deliver(record, work, dest)
        records.append(record)

    return finish(a, info, results, list(size), records, [], dest, work)


def continue_campaign_run(name: str, cfg, state: dict | None, seconds: float, runs: Path, camp,
                          min_seconds: float) -> dict:
    """Train campaign run ``name`` for about ``seconds`` towards its next milestone (``cfg.iterations`` is
    the run's length); its record.

    Reached with time to spare, the milestone's cool-down is branched here as the CPU campaign would
    branch it (``campaign.cooldown_length`` iterations, lr decayed to 0; exported, validated) and the
    run goes on towards the milestone after. At most one cool-down per run and session: what comes back
    is at most 8 files. Without the time for it, the run stops at the milestone and the CPU campaign
    branches the cool-down there. A run that starts at a milestone whose cool-down is not in
    ``campaign/cooldowns.json`` (an earlier call stopped it there) cools down first and trains on only
    after it: no milestone is passed without its cool-down.
    """
    from maskdn.train import TrainingStopped, cooldown, train
    from maskdn.train.checkpoint import load_state

    t_end = time.monotonic() + seconds
    length, it = cfg.iterations, (state["iteration"] if state else 0)
    target = it if pending_cooldown(camp, runs, name, length, it) else next_milestone(camp, length, it)
    say(f"{name}: at its milestone {it:,}, whose cool-down is to come" if target == it else
        f"{name}: towards its milestone at iteration {target:,} ({target - it:,} to go)")
    record = continue_run(name, dataclasses.replace(cfg, iterations=target), state, seconds, 0.0, runs, cool_down=False)
    record.update(campaign=True, milestone=target)
    if record["iteration"] != target or target not in camp.milestones(length):
        return record
    n, rate = camp.cooldown_length(target), record["patches_per_s"] / cfg.batch_size  # iterations per second
    if rate > 0 and t_end - time.monotonic() < n / rate * 1.2 + 30:  # no rate yet (nothing trained): try
        say(f"{name}: at its milestone {target:,}, without the time for its cool-down of {n} iterations "
            "(the CPU campaign will branch it)")
        return record
    out = Path(cfg.out)
    say(f"{name}: at its milestone {target:,}; its cool-down of {n} iterations")
    try:
        weights = cooldown(out, n, out.with_name(f"{name}-cd-{target}"), progress=False,
                           time_limit=max(1.0, t_end - time.monotonic()), device=cfg.device, workers=cfg.workers)
    except TrainingStopped:
        say(f"{name}: its cool-down did not finish in time (the CPU campaign will branch it)")
        return record
    cd = load_state(out.with_name(f"{name}-cd-{target}") / "state.pt")
    record.update(cooldown_weights=str(weights), cooldown=n, cooldown_at=target,
                  cooldown_val=cd["val_history"][-1]["psnr"] if cd["val_history"] else {})
    after_target = next_milestone(camp, length, target)
    if after_target is None or t_end - time.monotonic() < min_seconds:
        return record
    say(f"{name}: on towards its milestone at iteration {after_target:,}")
    before = load_state(out / "state.pt")["elapsed"]
    try:
        train(dataclasses.replace(cfg, iterations=after_target), progress=False, time_limit=t_end - time.monotonic())
    except TrainingStopped:
        pass
    after = load_state(out / "state.pt")
    record.update(iteration=after["iteration"], patches=after["iteration"] * cfg.batch_size, milestone=after_target,
                  train_s=round(record["train_s"] + after["elapsed"] - before, 1))
    if after.get("val_history"):
        record["run_val"] = {"iteration": after["val_history"][-1]["iteration"], "psnr": after["val_history"][-1]["psnr"]}
    return record


def pending_cooldown(camp, runs: Path, name: str, length: int, iteration: int) -> bool:
    """Whether campaign run ``name`` stands at one of its milestones without a recorded cool-down there."""
    return iteration in camp.milestones(length) and not any(
        (r["run"], r["iteration"]) == (name, iteration) for r in camp.read_cooldowns(runs.parent))


def next_milestone(camp, length: int, iteration: int) -> int | None:
    """The first of a campaign run's milestones (``camp.milestones``) or its ``length`` past ``iteration``."""
    ahead = sorted(m for m in {*camp.milestones(length), length} if m > iteration)
    return ahead[0] if ahead else None


def campaign_session(a: argparse.Namespace, names: list[str], total_end: float, work: Path, dest: Path,
                     device: torch.device, workers: int, info: dict) -> tuple[list[dict], list[dict]]:
    """Train each campaign run on the device towards its next milestone; (records, failures).

    The run with fewer iterations to go trains first; each gets the time left times its share of the
    iterations still to go (at least ``--min-run-seconds`` while that much is left), so time a run does
    not need (it reached its milestone) goes to the next. A run that fails, loading included, is
    reported and the next one still trains; ``summary.json`` is rewritten after each run, so a session
    cut short still returns what it finished.
    """
    from maskdn.errors import first_line

    camp = campaign_module()
    plan, records, failed = [], [], []

    def failure(name: str, e: Exception) -> None:
        say(f"{name}: FAILED: {type(e).__name__}: {first_line(e)}")
        failed.append({"run": name, "error": f"{type(e).__name__}: {first_line(e)}"[:300]})

    for name in names:
        try:
            cfg, state = run_config(name, a.runs, work, device, workers, campaign=True)
        except Exception as e:
            failure(name, e)
            continue
        it = state["iteration"] if state else 0
        target = next_milestone(camp, cfg.iterations, it)
        pending = camp.cooldown_length(it) if pending_cooldown(camp, a.runs, name, cfg.iterations, it) else 0
        if target is None and not pending:
            say(f"{name}: finished at iteration {it}, nothing to train")
            continue
        plan.append((pending + (target or it) - it, name, cfg, state))  # iterations to go, a cool-down's too
    plan.sort(key=lambda p: p[0])
    left = total_end - time.monotonic() - a.reserve_seconds  # no measurement: the session's time is the runs'
    train_end = time.monotonic() + min(a.minutes * 60 if a.minutes else math.inf, left)
    if a.parallel:
        return parallel_runs(a, [p[1] for p in plan], train_end, work, dest, info, failed)
    for i, (to_go, name, cfg, state) in enumerate(plan):
        left = train_end - time.monotonic()
        if left < a.min_run_seconds:
            say(f"{name}: skipped, {left:.0f} s left (under {a.min_run_seconds:.0f} s)")
            continue
        seconds = max(left * to_go / sum(p[0] for p in plan[i:]), min(a.min_run_seconds, left))
        try:
            record = continue_campaign_run(name, cfg, state, seconds, a.runs, camp, a.min_run_seconds)
            deliver(record, work, dest)
        except Exception as e:  # the other run still gets its turn, and the summary is written
            failure(name, e)
            continue
        records.append(record)
        write_summary(a, info, [], None, records, failed, dest)
    return records, failed


def parallel_runs(a: argparse.Namespace, names: list[str], train_end: float, work: Path, dest: Path, info: dict,
                  failed: list[dict]) -> tuple[list[dict], list[dict]]:
    """``--parallel``: each run in its own process (``--run-one``), all at once, each until ``train_end``
    (``time.monotonic()``, which is the system's clock, so the same in every process).

    A step of the campaign's small model at batch 16 launches some 2,500 small kernels, so one process
    leaves the GPU mostly idle between them; two processes keep it busier. Each gets half the data
    workers. A run whose process fails or outlives the session is reported; the other's files still come.
    """
    workers = a.workers if a.workers is not None else (
        0 if a.device == "cpu" else min(8, max(0, ((os.cpu_count() or 1) - 2) // max(1, len(names)))))
    procs = {}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", name, "--until", repr(train_end),
               "--runs", str(a.runs), "--out", str(dest), "--work", str(work), "--device", a.device,
               "--workers", str(workers)]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT)
        say(f"{name}: started in process {procs[name].pid} until {train_end - time.monotonic():.0f} s from now, "
            f"{workers} data workers")
    deadline = train_end + max(a.reserve_seconds, 15.0)  # its own limit, then the save and the copy
    records = []
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        result = dest / f".{name}-result.json"
        got = json.loads(result.read_text()) if result.is_file() else {"error": f"its process ended with status {proc.returncode}"}
        result.unlink(missing_ok=True)
        if "record" in got:
            records.append(got["record"])
        else:
            say(f"{name}: FAILED: {got['error']}")
            failed.append({"run": name, "error": got["error"][:300]})
        write_summary(a, info, [], None, records, failed, dest)
    return records, failed


def run_one(a: argparse.Namespace) -> int:
    """``--run-one NAME``: one campaign run towards its next milestone until ``--until``, delivered to
    ``--out``; its record (or error) goes to ``OUT/.NAME-result.json`` for :func:`parallel_runs`."""
    from maskdn.devices import resolve_device
    from maskdn.errors import first_line

    dest, name = Path(a.out), a.run_one
    try:
        os.chdir(ROOT)
        device = resolve_device(a.device)
        strict_float32(device)
        cfg, state = run_config(name, a.runs, Path(a.work), device, a.workers, campaign=True)
        record = continue_campaign_run(name, cfg, state, max(1.0, a.until - time.monotonic()), a.runs,
                                       campaign_module(), a.min_run_seconds)
        deliver(record, Path(a.work), dest)
        result = {"record": record}
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {first_line(e)}"}
    tmp = dest / f".{name}-result.json.tmp"
    tmp.write_text(json.dumps(result, default=_plain))
    tmp.replace(dest / f".{name}-result.json")
    return 0 if "record" in result else 1


def write_summary(a: argparse.Namespace, info: dict, results: list[dict], size: list[int] | None,
                  records: list[dict], failed: list[dict], dest: Path) -> dict:
    """``dest/summary.json`` (atomically): what ``--apply`` reads."""
    summary = {"machine": info, "forward_image": size, "measurements": results, "runs": records, "failed": failed,
               "minutes": a.minutes, "wall_s": round(time.monotonic() - START, 1), "date": time.strftime("%Y-%m-%d"),
               "commit": _commit()}
    tmp = dest / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=_plain))
    tmp.replace(dest / "summary.json")
    return summary


def finish(a: argparse.Namespace, info: dict, results: list[dict], size: list[int] | None, records: list[dict],
           failed: list[dict], dest: Path, work: Path) -> int:
    """Write ``summary.json``, print the summary, remove the work folder; the exit status (1 if a run failed)."""
    summary = write_summary(a, info, results, size, records, failed, dest)
    print_summary(summary, dest)
    if not a.keep_work and not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _plain(v):
    return None if isinstance(v, float) and not math.isfinite(v) else str(v)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _psnrs(d: dict | None) -> str:
    return "–" if not d else ", ".join(f"{k} {v:.2f}" for k, v in d.items())


def print_summary(s: dict, dest: Path) -> None:
    print(f"\nSummary ({s['wall_s']:.0f} s wall, {s['machine']['name']}):")
    ok = [r for r in s["measurements"] if r.get("correct")]
    if ok:
        best = min(ok, key=lambda r: r["train_step_s"])
        print(f"  fastest correct training setting: {best['dtype']}, {'compiled' if best['compile'] else 'eager'}, "
              f"{best['train_step_s'] * 1e3:.1f} ms per step ({best['patches_per_s']:.0f} patches/s)")
    for r in s["runs"]:
        print(f"  {r['run']}: iterations {r['start_iteration']} → {r['iteration']} ({r['patches']:,} patches), "
              f"{r['patches_per_s']:.1f} patches/s over {r['train_s']:.0f} s, "
              f"{'bfloat16' if r['bf16'] else 'float32'}{', compiled' if r['compile'] else ''}")
        if "run_val" in r:
            print(f"    validation at iteration {r['run_val']['iteration']}: {_psnrs(r['run_val']['psnr'])}")
        if r.get("campaign"):
            if "cooldown_at" in r:
                print(f"    cool-down of {r['cooldown']} iterations at its milestone {r['cooldown_at']:,}: "
                      f"{_psnrs(r.get('cooldown_val'))}")
            reached = r["iteration"] == r["milestone"]
            print(f"    {'reached' if reached else 'on the way to'} its milestone at iteration {r['milestone']:,}"
                  + (" (the CPU campaign branches its cool-down there)" if reached else ""))
        else:
            print(f"    after a cool-down of {r.get('cooldown', 0)} iterations: {_psnrs(r.get('cooldown_val'))}")
        print("    " + ", ".join(f"{dest / f} ({n / 2**20:.1f} MiB)" for f, n in r["files"].items()))
    for r in s.get("failed", []):
        print(f"  {r['run']}: FAILED ({r['error']})")
    if not s["runs"] and not s.get("failed"):
        print("  no run trained (no time left)")
    print(f"  {dest / 'summary.json'}")


# --------------------------------------------------------------------------------------------------
# Here, before and after: what travels, and what came back
# --------------------------------------------------------------------------------------------------


def tracked_bytes() -> int:
    """Bytes of the files that travel with the checkout: tracked, and untracked but not ignored (0
    outside a git checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True, timeout=60).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def gpu_images(source: Path) -> list[Path]:
    """The files of :data:`DATA` in ``source`` (CBSD432): every second training image, then the held-out ones."""
    from maskdn.io import expand_inputs

    paths = expand_inputs([source])
    return paths[: -HELD_OUT][::2] + paths[-HELD_OUT:]


def check_campaign_stopped(runs: Path) -> None:
    """Raise unless every campaign run is stopped and its newest state is the committed one: a session
    continues the committed states, so a run still going here would fork."""
    from maskdn.errors import MaskdnError

    camp, root = campaign_module(), runs.parent
    for name in KINDS:
        if not camp.config_path(root, name).is_file():
            continue
        if camp.running_pid(root, name):
            raise MaskdnError(f"campaign run {name!r} is running: stop the campaign first (campaign/stop.sh saves "
                              "each run's newest state into campaign/), commit, then prepare")
        local, committed = camp.run_dir(root, name) / "state.pt", camp.committed_state(root, name)
        if camp.iteration_of(local) > camp.iteration_of(committed):
            raise MaskdnError(f"{local}: iteration {camp.iteration_of(local):,}, newer than {committed} "
                              f"({camp.iteration_of(committed):,}): run 'python campaign/campaign.py save' and commit")


def _copy_folder(paths: list[Path], dest: Path) -> None:
    """``paths`` into a new folder ``dest`` (names kept), whole or not at all."""
    tmp = dest.with_name(f".{dest.name}.copying")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in paths:
        shutil.copyfile(path, tmp / path.name)
    tmp.rename(dest)


def prepare(a: argparse.Namespace) -> int:
    """Copy the runs' images into gpu-carry/, download the wheels, and print what travels and the carry list."""
    from maskdn.errors import MaskdnError
    from maskdn.io import expand_inputs

    campaign = a.preset is None
    if campaign:
        check_campaign_stopped(a.runs)
    data = CAMPAIGN_DATA if campaign else DATA
    if not data.is_dir():
        if not DATA_SOURCE.is_dir():
            raise MaskdnError(f"{DATA_SOURCE}: not found; the runs train on it (../shared beside the checkout)")
        _copy_folder(expand_inputs([DATA_SOURCE]) if campaign else gpu_images(DATA_SOURCE), data)
    print(" ".join(PIP_DOWNLOAD))
    if subprocess.run(PIP_DOWNLOAD).returncode:
        raise MaskdnError("pip download failed (the wheels travel to the GPU machine, which reaches no index)")
    carry = [data, CARRY / "wheels"]
    tracked, carried = tracked_bytes(), sum(folder_bytes(c) for c in carry)
    from maskdn.model import MaskedSwinIR, preset

    # a run without a state gets one from its first session: model, EMA and Adam's two moments in float32
    # and the records around them, 16.7 bytes per parameter (a paper-preset state: 13.1 MiB)
    coming = 0
    if not campaign:
        params = sum(p.numel() for p in MaskedSwinIR(preset(a.preset)).parameters())
        coming = sum(round(16.7 * params) for k in KINDS if not (a.runs / run_name(a.preset, k) / "state.pt").is_file())
    total = tracked + carried + coming
    names = " ".join(str(c.relative_to(ROOT)) for c in carry)
    print(f"travels: {tracked / 2**20:.1f} MiB of the checkout + {carried / 2**20:.1f} MiB carried ({names})"
          + (f" + {coming / 2**20:.1f} MiB of states to come" if coming else "")
          + f" = {total / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f}")
    if total > TRAVEL_LIMIT:
        raise MaskdnError(f"{total / 2**20:.1f} MiB would travel, over {TRAVEL_LIMIT / 2**20:.0f} MiB: "
                          "untrack or shrink the largest files (git ls-files | xargs du -b | sort -n)")
    args = "" if campaign else f" --preset {a.preset}"
    print(f"run on the GPU machine: bash benchmarks/gpu_run.sh{args}   (carry: {names}; timeout 570 s; docs/gpu.md)")
    return 0


def _replace_between(path: Path, markers: tuple[str, str], rows: list[str]) -> None:
    text = path.read_text()
    head, rest = text.split(markers[0], 1)
    body, tail = rest.split(markers[1], 1)
    lines = body.strip("\n").splitlines() + rows
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{markers[0]}\n" + "\n".join(lines) + f"\n{markers[1]}{tail}")
    tmp.replace(path)


def apply_campaign(record: dict, src: Path, runs: Path) -> tuple[int, int]:
    """A campaign run's returned state into ``campaign/NAME/state.pt``: (iteration before, after).

    Refused while the run is running here, or when the state is not newer than both the committed and
    the local one. The settings that may change on resume (device, data workers, threads, run folder:
    ``MAY_CHANGE_ON_RESUME``) are set back to the committed ``config.toml``'s in the state's own config,
    so that what branches off the state later (a milestone's cool-down) runs on this machine, not the
    GPU's. Its log stays behind (the campaign commits states, not logs).
    """
    from maskdn.errors import MaskdnError
    from maskdn.train import load_config
    from maskdn.train.checkpoint import load_state, save_state
    from maskdn.train.config import MAY_CHANGE_ON_RESUME

    camp, root, name = campaign_module(), runs.parent, record["run"]
    if camp.running_pid(root, name):
        raise MaskdnError(f"campaign run {name!r} is running here; stop it (campaign/stop.sh), then --apply again")
    state_file = src / f"{name}-state.pt"
    state = load_state(state_file)
    new = state["iteration"]
    old = max(camp.iteration_of(camp.committed_state(root, name)), camp.iteration_of(camp.run_dir(root, name) / "state.pt"))
    if new <= old:
        raise MaskdnError(f"{state_file}: iteration {new:,}, not newer than campaign run {name!r}'s {old:,}")
    if old != record["start_iteration"]:
        say(f"{name}: note: the GPU continued it from iteration {record['start_iteration']:,}, but here it is at "
            f"{old:,}; the iterations from {record['start_iteration']:,} here are a branch left behind")
    here = load_config(runs / name / "config.toml").to_dict()
    state["config"] |= {k: here[k] for k in MAY_CHANGE_ON_RESUME if k in here}
    save_state(camp.committed_state(root, name), state)
    if "cooldown_at" in record:  # recorded as campaign.py records its own: the CPU process then benchmarks it
        at, bs = record["cooldown_at"], state["config"]["batch_size"]
        final = {"iteration": at + record["cooldown"], "config": {"batch_size": bs},
                 "val_history": [{"psnr": record["cooldown_val"]}] if record["cooldown_val"] else []}
        keep = camp.keep_cooldown(root, name, at, final, src / f"{name}-cooldown.safetensors")
        say(f"{name}: its cool-down at iteration {at:,} → {keep}")
    return old, new


def apply(a: argparse.Namespace) -> int:
    """Commit-ready: each returned state (newer than the committed one) into campaign/NAME/ (a campaign
    run) or with its log into campaign/gpu-*/, the cool-down weights into runs/gpu/ (git-ignored: they
    would not travel), rows into docs/gpu.md."""
    from maskdn.errors import MaskdnError
    from maskdn.train.checkpoint import load_state

    src = Path(a.apply)
    try:
        s = json.loads((src / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise MaskdnError(f"{src / 'summary.json'}: not a GPU session's summary ({e})") from None
    rows, refused = [], []
    for r in s.get("failed", []):
        print(f"{r['run']}: failed on the GPU machine ({r['error']}); nothing to apply")
    for r in s["runs"]:
        name, folder = r["run"], a.runs / r["run"]
        state_file = src / f"{name}-state.pt"
        if r.get("campaign"):
            try:
                old, now = apply_campaign(r, src, a.runs)
            except MaskdnError as e:  # the other run is still applied
                print(f"gpu_run: error: {e}", file=sys.stderr)
                refused.append(name)
                continue
            rows.append(_run_row(s, r))
            print(f"{name}: iteration {old:,} → {now:,} into {folder / 'state.pt'}")
            continue
        new = load_state(state_file)
        old = load_state(folder / "state.pt")["iteration"] if (folder / "state.pt").is_file() else -1
        if new["iteration"] <= old:
            raise MaskdnError(f"{state_file}: iteration {new['iteration']}, not newer than {folder / 'state.pt'} ({old})")
        for target, source in (("state.pt", state_file), ("log.csv", src / f"{name}-log.csv")):
            tmp = folder / f".{target}.tmp"
            shutil.copyfile(source, tmp)
            tmp.replace(folder / target)
        config = folder / "config.toml"  # bf16 is chosen when a run starts; the config then records it
        bf16 = f"bf16 = {'true' if new['config']['bf16'] else 'false'}"
        lines = [bf16 if line.startswith("bf16 =") else line for line in config.read_text().splitlines()]
        config.write_text("\n".join(lines) + "\n")
        weights = src / f"{name}-cooldown.safetensors"
        if weights.is_file():
            keep = a.runs.parent / "runs" / "gpu" / f"{name}-{r['patches']}.safetensors"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, keep)
        rows.append(_run_row(s, r))
        print(f"{name}: iteration {old} → {new['iteration']} into {folder}")
    measured = [f"| {s['date']} | {s['machine']['name']} | {s['machine']['torch']} | {m['dtype']} | "
                f"{'compiled' if m['compile'] else 'eager'} | "
                + (f"{m['forward_s'] * 1e3:.1f} | {m['train_step_s'] * 1e3:.1f} | {m['patches_per_s']:.0f} | "
                   f"{m['forward_psnr_db']:.1f} dB, {m['loss_rel']:.1e}, {m['grad_cos']:.5f} | "
                   f"{'yes' if m['correct'] else 'no'} |" if "train_step_s" in m
                   else f"– | – | – | {m.get('skipped') or m.get('error')} | – |")
                for m in s["measurements"]]
    doc = ROOT / "docs" / "gpu.md"
    if s["machine"]["device"] != "cpu":  # a dry run's numbers say nothing about a GPU
        _replace_between(doc, GPU_TABLE, rows)
        _replace_between(doc, MEASURE_TABLE, measured)
        print(f"rows added to {doc}")
    campaign = any(r.get("campaign") for r in s["runs"])
    adds = ([str(a.runs), "docs/campaign.png", "docs/campaign-bench.png", "docs/training.md"] if campaign else
            [str(a.runs / r["run"]) for r in s["runs"] if r["run"] not in refused])
    print(f"now: git add {' '.join(adds)} docs/gpu.md && git commit" + ("; then campaign/resume.sh" if campaign else ""))
    return 1 if refused else 0


def _run_row(s: dict, r: dict) -> str:
    """A returned run's row of docs/gpu.md's runs table."""
    if r.get("campaign"):
        after = f"to milestone {r['milestone']:,}" if r["iteration"] < r["milestone"] else "milestone reached"
        if "cooldown_at" in r:
            after = f"{r['cooldown']} at {r['cooldown_at']:,}: {_psnrs(r.get('cooldown_val'))}; then {after}"
    else:
        after = f"{r.get('cooldown', 0)}: {_psnrs(r.get('cooldown_val'))}"
    return (f"| {s['date']} | {s['machine']['name']} | {s['commit']} | `{r['run']}` | "
            f"{r['start_iteration']:,} → {r['iteration']:,} | {r['patches']:,} | {r['patches_per_s']:.0f} | "
            f"{'bf16' if r['bf16'] else 'fp32'}{', compiled' if r['compile'] else ''} | "
            f"{_psnrs(r.get('run_val', {}).get('psnr'))} | {after} |")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the GPU session), or cpu for the dry run")
    p.add_argument("--preset", default=None,
                   help="continue campaign/gpu-PRESET-masked and -baseline (after a measurement of the preset) "
                        "instead of the campaign's masked and baseline runs")
    p.add_argument("--minutes", type=float, default=None,
                   help="training budget of both runs, cool-downs included (default: the campaign's runs all the "
                        "session's time, --total-minutes; with --preset 7)")
    p.add_argument("--total-minutes", type=float, default=9.0,
                   help="the whole session's wall clock, from the start: training shrinks to fit (a 570 s command limit)")
    p.add_argument("--measure-minutes", type=float, default=1.5, help="--preset only: the measurement's budget; settings past it are skipped")
    p.add_argument("--masked-share", type=float, default=0.6, help="--preset only: share of the training budget for the masked run")
    p.add_argument("--cooldown-share", type=float, default=0.15, help="--preset only: share of a run's time kept for its cool-down")
    p.add_argument("--reserve-seconds", type=float, default=20.0, help="kept at the end for copying and the summary")
    p.add_argument("--min-run-seconds", type=float, default=None, help="a run with less time is skipped (45 on CUDA, 1 on CPU)")
    p.add_argument("--out", default=None, help="where the files go (default: $OUT)")
    p.add_argument("--runs", type=Path, default=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help="run folders during the session (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary run folders")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: CPUs − 2, at most 8; 0 on CPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="--preset only: timed repeats per measurement (3 on CUDA; 0 on CPU: the first call only)")
    p.add_argument("--no-compile", action="store_true", help="--preset only: measure and train without torch.compile")
    p.add_argument("--parallel", action="store_true",
                   help="train the campaign's runs at once, each in its own process (docs/gpu.md: measured against one at a time)")
    p.add_argument("--run-one", metavar="NAME", help=argparse.SUPPRESS)  # a --parallel session's worker
    p.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help="here: fill gpu-carry/ (data, wheels) and print the travel size")
    p.add_argument("--apply", metavar="DIR", help="here: take a returned folder into campaign/ and docs/gpu.md")
    a = p.parse_args(argv)
    if a.min_run_seconds is None:
        a.min_run_seconds = 1.0 if a.device == "cpu" else 45.0
    from maskdn.errors import MaskdnError

    try:
        if a.prepare:
            return prepare(a)
        if a.apply:
            return apply(a)
        if a.run_one:
            return run_one(a)
        return session(a)
    except MaskdnError as e:
        print(f"gpu_run: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
