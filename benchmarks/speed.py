"""Speed of the literal reference attention path against maskdn's fast path: prints a table, writes JSON.

Workloads (masks on, as in masked training and testing, unless the preset is named NAME-unmasked):
  (a) forward pass on one 768×512 RGB image (inference mode);
  (b) one training step on 16 patches of 64×64: forward, L1 loss, backward, Adam;
  (c) tiled denoise of a 6000×4000 image (tile 256, overlap 32): time and peak resident memory, on the
      maskdn default rows (``--tiled-all``: every row).
Each configuration runs in its own process, so the allocator setting (glibc default, or maskdn's
``keep_freed_memory``) and the peak memory are its own. The configurations run in ``--rounds``
interleaved rounds (every row once, then every row again) and each keeps its best round: this machine
drifts by 10-15% over minutes, and interleaving spreads the drift over all rows instead of over the
rows that happened to run last. Rows: path × allocator × dtype, so the table
shows where the time goes; "maskdn default" is the fast path with ``keep_freed_memory`` (and, where a C
compiler is present, the fused attention kernel of ``maskdn.fastpath.kernels``; one more row runs the default
with ``MASKDN_CPU_KERNEL=0``). Achieved
GFLOP/s count the reference path's matrix FLOPs (torch's FlopCounterMode) against a matmul measured in
the same run with the same threads.

    python benchmarks/speed.py                       # both presets and IDF, all rows, tiled run on the small preset
    python benchmarks/speed.py --presets small idf --quick   # IDF's forward beside the small preset
    python benchmarks/speed.py --presets small --quick
    python benchmarks/speed.py --presets small small-unmasked --quick   # the masked model beside its unmasked baseline
    python benchmarks/speed.py --device cuda         # on a GPU machine: its own rows, batch 64 (docs/gpu.md)
    python benchmarks/speed.py --tiled-only --tiled-presets paper --out benchmarks/results/speed-paper-tiled.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from maskdn.fastpath.kernels import kernel_status

ROOT = Path(__file__).resolve().parent
IMAGE = (512, 768)  # (a): H, W
BATCH, PATCH = 16, 64  # (b); --batch sets BATCH (default 16 on CPU, the paper's 64 on CUDA)
BIG = (4000, 6000)  # (c): H, W
TILE, OVERLAP = 256, 32


# --------------------------------------------------------------------------------------------------
# Worker: one configuration in a fresh process
# --------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


FAULTS: dict[str, float] = {}
"""Minor page faults per timed run, by workload: the cost that ``keep_freed_memory`` removes."""


def _timed(fn, device: str, repeats: int, name: str = "", warmup: int = 1) -> float:
    """Best of ``repeats`` timed runs after ``warmup`` untimed ones (which fill caches and the allocator)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    if name:
        FAULTS[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    return best


UNMASKED = "-unmasked"
"""A preset name with this suffix (``small-unmasked``) times the preset with its attention mask off: the
unmasked baseline, whose attention runs over all 64 keys of each window."""


def _model(preset_name: str, impl: str, device: str):
    if preset_name == IDF:  # the rival network (maskdn.idf): one path, no attention to switch
        from maskdn.idf import IDFNet

        torch.manual_seed(0)
        return IDFNet().to(device)
    from maskdn.model import MaskedSwinIR, preset

    torch.manual_seed(0)
    base = preset_name.removesuffix(UNMASKED)  # "small-unmasked": the preset with its masks off (the baseline)
    model = MaskedSwinIR(preset(base, **({"attn_mask_ratio": 0.0} if base != preset_name else {}))).to(device)
    model.set_attention(impl.removesuffix("-torch-core").removesuffix("-compiled"))
    return model.compile_blocks() if impl.endswith("-compiled") else model


def _forward(model, device: str, bf16: bool, repeats: int) -> float:
    x = torch.rand(1, 3, *IMAGE, device=device)
    model.eval()

    def run():
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            model(x, generator=torch.Generator(device).manual_seed(0))

    return _timed(run, device, repeats, "forward_page_faults")


def _train_step(model, device: str, bf16: bool, repeats: int) -> float:
    from maskdn.masking import input_mask

    g = torch.Generator(device).manual_seed(0)
    clean = torch.rand(BATCH, 3, PATCH, PATCH, device=device, generator=g)
    noisy, _ = input_mask((clean + 0.06 * torch.randn(clean.shape, device=device, generator=g)).clamp(0, 1), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def run():
        with torch.autocast(clean.device.type, torch.bfloat16, enabled=bf16):
            out = model(noisy, generator=g)
        loss = (out.float() - clean).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # three warm-up steps: the heap keeps growing (page faults) for the first few steps
    return _timed(run, device, repeats, "train_page_faults", warmup=3)


def _tiled(model, device: str, bf16: bool) -> float:
    from maskdn.inference import denoise_tensor

    x = torch.rand(1, 3, *BIG, device=device, generator=torch.Generator(device).manual_seed(0))
    t = time.perf_counter()
    denoise_tensor(model, x, tile=TILE, tile_overlap=OVERLAP, generator=torch.Generator(device).manual_seed(0), bf16=bf16)
    _sync(device)
    return time.perf_counter() - t


def _peak_rss_gib() -> float:
    """This process's peak resident memory. On Linux, VmHWM: ``ru_maxrss`` survives ``execve``, so a worker
    would report the parent's peak when that is higher (it was: 2.21 GiB for a 0.97 GiB tiled run)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB (macOS: bytes)


def worker(args: argparse.Namespace) -> dict:
    if args.keep_memory:
        from maskdn.fastpath.runtime import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    model = _model(args.preset, args.impl, args.device)
    if args.task == "tiled":
        return {"tiled_s": _tiled(model, args.device, args.bf16), "peak_rss_gib": _peak_rss_gib(),
                "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None}
    return {"forward_s": _forward(model, args.device, args.bf16, args.repeats),
            "train_step_s": _train_step(model, args.device, args.bf16, args.train_repeats), **FAULTS}


# --------------------------------------------------------------------------------------------------
# Reference numbers measured in the parent: FLOPs and the matmul peak
# --------------------------------------------------------------------------------------------------


def count_flops(preset_name: str) -> dict:
    """Matrix FLOPs of the two workloads on the reference path (the useful work, path-independent)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(preset_name, "reference", "cpu")
    counts = {}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.rand(1, 3, *IMAGE))
    counts["forward"] = fc.get_total_flops()
    x = torch.rand(BATCH, 3, PATCH, PATCH)
    with FlopCounterMode(display=False) as fc:
        model.train()(x).mean().backward()
    counts["train_step"] = fc.get_total_flops()
    return counts


def matmul_peak(device: str, threads: int, dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an ``n×n`` matmul with ``threads`` threads (best of five): the faster of ``torch.mm``
    and, where :mod:`maskdn.fastpath.linear` uses it, oneDNN's product (a float32 ``torch.mm`` on CPU
    runs MKL, slower than oneDNN on this project's machine: see docs/performance.md)."""
    from maskdn.fastpath.linear import onednn_linear, uses_onednn

    torch.set_num_threads(threads)
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, 5)
    if uses_onednn(a, b):
        b_t = b.t().contiguous()
        seconds = min(seconds, _timed(lambda: onednn_linear(a, b_t), device, 5))
    return 2 * n**3 / seconds / 1e9


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


ROWS = [  # (path, keep_memory, label)
    ("reference", False, "reference, glibc malloc"),
    ("reference", True, "reference, keep_freed_memory"),
    ("fast", False, "fast, glibc malloc"),
    ("fast", True, "fast, keep_freed_memory (maskdn default)"),
    # the default with the attention core on PyTorch ops instead of maskdn's C kernel: what the kernel buys
    ("fast-torch-core", True, "fast, keep_freed_memory, MASKDN_CPU_KERNEL=0"),
]
QUICK_ROWS = [ROWS[0], ROWS[3], ROWS[4]]
IDF = "idf"
"""``--presets idf``: IDF (Kim et al., ICCV 2025; maskdn.idf, the released models' config), the rival
network, timed beside the SwinIR presets on the same workloads; its one row is maskdn's default."""
IDF_ROWS = [("fast", True, "IDF, keep_freed_memory (maskdn default)")]
CUDA_ROWS = [  # on a GPU the allocator rows mean nothing (PyTorch caches device memory itself)
    ("reference", False, "reference"),
    ("sdpa", False, "sdpa"),
    ("fast", False, "batched (maskdn default off CPU)"),
    ("fast-compiled", False, "batched, compile_blocks"),
]


def _run_worker(task: str, preset_name: str, impl: str, keep: bool, bf16: bool, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--preset", preset_name, "--impl", impl,
           "--threads", str(a.threads), "--device", a.device, "--repeats", str(a.repeats),
           "--train-repeats", str(a.train_repeats), "--batch", str(a.batch)]
    cmd += ["--keep-memory"] if keep else []
    cmd += ["--bf16"] if bf16 else []
    env = dict(os.environ, MASKDN_KEEP_FREED_MEMORY="1" if keep else "0")
    if impl == "fast-torch-core":
        env["MASKDN_CPU_KERNEL"] = "0"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_json(out: Path, record: dict, a: argparse.Namespace, argv: list[str] | None) -> None:
    """``record`` with the machine and the command, written through a temporary file."""
    record = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": a.threads, "device": a.device, "torch": torch.__version__},
        "command": " ".join([Path(sys.executable).name, "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu_kernel": kernel_status(),
        **record,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")


def tiled_only(a: argparse.Namespace, argv: list[str] | None = None) -> int:
    """(c) alone: the tiled 6000×4000 denoise on the maskdn default path, per preset and dtype."""
    results = []
    for preset_name in a.tiled_presets:
        for dtype in a.tiled_dtypes:
            r = _run_worker("tiled", preset_name, "fast", True, dtype == "bfloat16", a)
            r.update(preset=preset_name, path="fast", keep_freed_memory=True, label=ROWS[3][2], dtype=dtype)
            results.append(r)
            print(f"{preset_name:6} {dtype:8} tiled {BIG[1]}×{BIG[0]} (tile {TILE}, overlap {OVERLAP}): "
                  f"{r['tiled_s']:.0f} s, peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    _write_json(Path(a.out), {"results": results}, a, argv)
    return 0


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["paper", "small", IDF], help=f"SwinIR presets (NAME{UNMASKED}: masks off) and/or {IDF!r}")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="patches per training step (default: 16 on CPU, 64 on CUDA)")
    p.add_argument("--repeats", type=int, default=2, help="timed forward passes after one warm-up; the best counts")
    p.add_argument("--train-repeats", type=int, default=5, help="timed training steps after three warm-up steps")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all rows; each row keeps its best")
    p.add_argument("--quick", action="store_true", help="only the reference (glibc), maskdn-default and PyTorch-core rows, no tiled run")
    p.add_argument("--tiled-presets", nargs="*", default=["small"], help="presets for the 6000×4000 run (slow)")
    p.add_argument("--tiled-dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                   help="dtypes of the tiled run (the paper preset takes about 30 min per dtype on one thread)")
    p.add_argument("--tiled-only", action="store_true",
                   help="only (c), on the maskdn default rows of --tiled-presets (the paper preset's takes 10-20 min per dtype)")
    p.add_argument("--tiled-all", action="store_true",
                   help="tiled run for every row, not only the maskdn default (the reference takes about 10 min)")
    p.add_argument("--out", default=str(ROOT / "results" / "speed.json"))
    p.add_argument("--worker", choices=["steps", "tiled"], help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--keep-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    global BATCH
    on_cuda = a.device.startswith("cuda")
    BATCH = a.batch = a.batch or (64 if on_cuda else 16)
    if a.worker:
        a.task = a.worker
        print(json.dumps(worker(a)))
        return 0

    if a.tiled_only:
        return tiled_only(a, argv)
    rows = CUDA_ROWS if on_cuda else QUICK_ROWS if a.quick else ROWS
    peaks = {str(dt).removeprefix("torch."): matmul_peak(a.device, a.threads, dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"matmul peak, {a.threads} thread(s) on {a.device}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    results = []
    for preset_name in a.presets:
        flops = count_flops(preset_name)
        configs = [(impl, keep, label, bf16) for impl, keep, label in (IDF_ROWS if preset_name == IDF else rows)
                   for bf16 in (False, True)]
        runs: list[list[dict]] = [[] for _ in configs]
        for rnd in range(a.rounds):
            for i, (impl, keep, label, bf16) in enumerate(configs):
                r = _run_worker("steps", preset_name, impl, keep, bf16, a)
                print(f"{preset_name:6} round {rnd + 1}/{a.rounds} {label:42} {'bfloat16' if bf16 else 'float32':8}  "
                      f"fwd {r['forward_s']:7.2f} s  train {r['train_step_s']:7.2f} s", flush=True)
                runs[i].append(r)
        for rows_runs, (impl, keep, label, bf16) in zip(runs, configs):
            dtype = "bfloat16" if bf16 else "float32"
            fwd, train = (min(rows_runs, key=lambda r, k=k: r[k]) for k in ("forward_s", "train_step_s"))
            r = {"forward_s": fwd["forward_s"], "forward_page_faults": fwd["forward_page_faults"],
                 "train_step_s": train["train_step_s"], "train_page_faults": train["train_page_faults"],
                 "rounds_forward_s": [x["forward_s"] for x in rows_runs],
                 "rounds_train_step_s": [x["train_step_s"] for x in rows_runs]}
            r.update(preset=preset_name, path=impl, keep_freed_memory=keep, label=label, dtype=dtype,
                     forward_gflops=flops["forward"] / r["forward_s"] / 1e9,
                     train_gflops=flops["train_step"] / r["train_step_s"] / 1e9)
            if not a.quick and preset_name in a.tiled_presets and dtype in a.tiled_dtypes and (keep or on_cuda or a.tiled_all) and (impl == "fast" or a.tiled_all):
                r.update(_run_worker("tiled", preset_name, impl, keep, bf16, a))
            results.append(r)
            print(f"{preset_name:6} best  {label:42} {dtype:8}  fwd {r['forward_s']:7.2f} s  train {r['train_step_s']:7.2f} s"
                  + (f"  tiled {r['tiled_s']:6.0f} s {r['peak_rss_gib']:.2f} GiB" if "tiled_s" in r else ""), flush=True)

    def find(preset_name, impl, keep, dtype):
        return next((r for r in results if (r["preset"], r["path"], r["keep_freed_memory"], r["dtype"]) == (preset_name, impl, keep, dtype)), None)

    speedups = {}
    for preset_name in (p for p in a.presets if p != IDF):  # IDF has no second path to compare
        ref, fast = find(preset_name, "reference", False, "float32"), find(preset_name, "fast", not on_cuda, "float32")
        fast_bf16 = find(preset_name, "fast", not on_cuda, "bfloat16")
        ref_keep = find(preset_name, "reference", True, "float32")
        torch_core = find(preset_name, "fast-torch-core", True, "float32")
        speedups[preset_name] = {
            "fast_fp32_vs_reference_forward": ref["forward_s"] / fast["forward_s"],
            "fast_fp32_vs_reference_train": ref["train_step_s"] / fast["train_step_s"],
            "attention_only_forward": None if ref_keep is None else ref_keep["forward_s"] / fast["forward_s"],
            "attention_only_train": None if ref_keep is None else ref_keep["train_step_s"] / fast["train_step_s"],
            "bf16_vs_fp32_forward": fast["forward_s"] / fast_bf16["forward_s"],
            "bf16_vs_fp32_train": fast["train_step_s"] / fast_bf16["train_step_s"],
            "kernel_vs_torch_core_forward": None if torch_core is None else torch_core["forward_s"] / fast["forward_s"],
            "kernel_vs_torch_core_train": None if torch_core is None else torch_core["train_step_s"] / fast["train_step_s"],
        }

    lines = [
        "| preset | path, allocator | dtype | (a) forward 768×512 s | GFLOP/s | % peak | page faults | "
        f"(b) train step {BATCH}×64² s | GFLOP/s | % peak | page faults | (c) tiled 6000×4000 s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = peaks[r["dtype"]]
        lines.append(
            f"| {r['preset']} | {r['label']} | {r['dtype']} | {r['forward_s']:.2f} | {r['forward_gflops']:.1f} | "
            f"{100 * r['forward_gflops'] / peak:.0f} | {r['forward_page_faults']:,.0f} | {r['train_step_s']:.2f} | "
            f"{r['train_gflops']:.1f} | {100 * r['train_gflops'] / peak:.0f} | {r['train_page_faults']:,.0f} | "
            f"{_fmt(r.get('tiled_s'), '.0f')} | {_fmt(r.get('peak_rss_gib'))} |"
        )
    lines.append("")
    lines.append("| preset | maskdn default fp32 vs reference (glibc): forward | train step | "
                 "fast vs reference, both keep_freed_memory: forward | train step | bf16 vs fp32 (maskdn default): forward | train step | "
                 "C kernel vs PyTorch attention core: forward | train step |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    x = lambda v: "–" if v is None else f"{v:.2f}×"  # noqa: E731
    for name, s in speedups.items():
        lines.append(f"| {name} | {x(s['fast_fp32_vs_reference_forward'])} | {x(s['fast_fp32_vs_reference_train'])} | "
                     f"{x(s['attention_only_forward'])} | {x(s['attention_only_train'])} | "
                     f"{x(s['bf16_vs_fp32_forward'])} | {x(s['bf16_vs_fp32_train'])} | "
                     f"{x(s['kernel_vs_torch_core_forward'])} | {x(s['kernel_vs_torch_core_train'])} |")
    table = "\n".join(lines)
    print()
    print(table)
    record = {"rounds": a.rounds, "repeats": a.repeats, "train_repeats": a.train_repeats, "matmul_peak_gflops": peaks,
              "results": results, "speedups": speedups, "table_md": table}
    _write_json(Path(a.out), record, a, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
