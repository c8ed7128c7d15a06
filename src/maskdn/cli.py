"""The ``maskdn`` command: thin subcommands over the Python API.

Every user-facing problem is a :class:`MaskdnError`, printed as one line on stderr with exit status 1;
no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .errors import MaskdnError
from .fastpath.runtime import keep_freed_memory


def _add_denoise_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="zoo name or weights file (default: the default zoo model)")
    p.add_argument("--passes", type=int, default=1, help="average K stochastic attention-mask passes")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations")
    p.add_argument("--tile", type=int, default=None, help="denoise in N×N tiles (bounded memory)")
    p.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the attention masks (reproducible output)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast: faster on CPUs with bf16 units, within 0.05 dB")


def _denoise_options(a: argparse.Namespace) -> dict:
    return dict(passes=a.passes, self_ensemble=a.self_ensemble, tile=a.tile, tile_overlap=a.tile_overlap,
                seed=a.seed, device=a.device, bf16=a.bf16)


def cmd_denoise(a: argparse.Namespace) -> int:
    """``maskdn denoise``: denoise files; each failed file is reported, exit status 1 if any failed.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: an unusable model or options (:func:`maskdn.inference.denoise_files`); :func:`main`
            prints it as one line.
    """
    from .inference import denoise_files

    failures = denoise_files(a.inputs, a.output, a.model, **_denoise_options(a))
    for path, message in failures:
        print(f"maskdn: failed: {message}", file=sys.stderr)
    if failures:
        print(f"maskdn: {len(failures)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


def cmd_noise(a: argparse.Namespace) -> int:
    """``maskdn noise``: write seeded noisy copies; exit status 1 if any file failed.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: an invalid noise spec or output (:func:`maskdn.noise.write_noisy_copies`); :func:`main`
            prints it as one line.
    """
    from .noise import write_noisy_copies

    failures = write_noisy_copies(a.inputs, a.output, a.noise, seed=a.seed, quantize=not a.float)
    for _, message in failures:
        print(f"maskdn: failed: {message}", file=sys.stderr)
    return 1 if failures else 0


def cmd_models(a: argparse.Namespace) -> int:
    """``maskdn models``: list the bundled models (``--json``: machine-readable).

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: an unreadable bundled file (:func:`maskdn.weights.describe_zoo`); :func:`main` prints it
            as one line.
    """
    from .weights import describe_zoo

    rows = describe_zoo()
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no bundled models")
        return 0
    for r in rows:
        t, s = r["training"], r["scores"]
        star = " (default)" if r["default"] else ""
        imask = t.get("input_mask")
        masks = (f"attention mask {r['attn_mask_ratio']:.0%}, input mask "
                 + (f"{imask[0]:.0%}–{imask[1]:.0%}" if imask else "off"))
        if not imask and not r["attn_mask_ratio"]:
            masks = "unmasked baseline (no input or attention mask)"
        print(f"{r['name']}{star}: preset {r['preset']}, {r['parameters']:,} parameters, {masks}")
        if t:
            print(f"  trained on {t.get('data')} with {t.get('noise')}: {t.get('iterations')} iterations × "
                  f"batch {t.get('batch_size')} of {t.get('patch_size')}² patches ({t.get('patches_seen'):,} "
                  f"patches), {t.get('wall_time_s', 0) / 60:.0f} min on {t.get('threads')} CPU thread(s)")
        for dataset, scores in s.items():
            cells = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            print(f"  PSNR dB on {dataset}: {cells}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """``maskdn demo``: denoise the bundled sample photos and print the PSNR table.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.demo.run_demo`; :func:`main` prints it as one line.
    """
    from .demo import run_demo

    result = run_demo(a.output, model=a.model, seed=a.seed, passes=a.passes)
    print(result["table"])
    print(f"\nwrote {a.output}/ (comparison.png, psnr.md, psnr.json, noisy and denoised images)")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``maskdn evaluate``: print mean PSNR per dataset and noise (``--record``: store it in the file).

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: ``--record`` with ``noisy``, or from loading, evaluating or recording; :func:`main`
            prints it as one line.
    """
    from .evaluate import evaluate, scores_table
    from .weights import load_model, update_training_record
    from .zoo import resolve

    if a.model == "noisy" and a.record:
        raise MaskdnError("--record needs a model file, not noisy")
    model = None if a.model == "noisy" else load_model(a.model)
    scores = evaluate(model, a.data, a.noise, seed=a.seed, passes=a.passes, limit=a.limit, tile=a.tile)
    print(scores_table(scores))
    if a.record:
        protocol = {"seed": a.seed, "passes": a.passes, "limit": a.limit,
                    "note": "mean PSNR (dB, RGB, 8-bit) of maskdn evaluate; noisy inputs clipped and 8-bit quantized"}
        update_training_record(resolve(a.model), scores=scores, scores_protocol=protocol)
        print(f"recorded the scores in {resolve(a.model)}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    """``maskdn bench``: run the generalization benchmark and print its summary.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: no ``--model`` or ``--method``, or from :func:`maskdn.generalization.run_bench`;
            :func:`main` prints it as one line.
    """
    from pathlib import Path

    from .generalization import PAPER_GRID, run_bench

    methods = [*a.model, *a.method]
    if not methods:
        raise MaskdnError("give at least one --model or --method")
    lpips = True if a.lpips_backbone else a.lpips
    records = run_bench(a.data, methods, a.noise or PAPER_GRID, a.out, seed=a.seed, passes=a.passes,
                        limit=a.limit, device=a.device, jobs=a.jobs, lpips=lpips, lpips_backbone=a.lpips_backbone)
    summary = (Path(a.out) / "summary.md").read_text(encoding="utf-8")
    print(summary)
    if lpips and not any("lpips" in r for r in records):
        why = next((line[2:] for line in summary.splitlines() if line.startswith("- LPIPS not computed")), "")
        print(f"maskdn: warning: {why or 'LPIPS not computed'}", file=sys.stderr)
    print(f"\nwrote {a.out}/ (results.json, summary.csv, summary.md, curves.png, gallery.png)")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    """``maskdn analyze``: feature statistics of models under several noises.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.analysis.analyze`; :func:`main` prints it as one line.
    """
    from .analysis import analyze, summary_markdown

    result = analyze(a.model, a.data, a.noise, a.out, layers=a.layer, reference=a.reference, limit=a.limit,
                     crop=a.crop, tokens=a.tokens, bins=a.bins, seed=a.seed, device=a.device)
    print(summary_markdown(result))
    print(f"\nwrote {a.out}/ (analysis.json, summary.md, cka.png, histograms_<model>.png)")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """``maskdn train``: train or resume a run, or branch a wsd cool-down (``--cooldown``).

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: a ``--set`` item without ``=``, ``--cooldown`` without a run and ``--out`` (or with
            ``--data``), or from :func:`maskdn.train.load_config`, :func:`maskdn.train.train` or
            :func:`maskdn.train.cooldown`; :func:`main` prints it as one line.
    """
    import os

    from .train import TrainConfig, load_config, shipped_configs, train

    if a.list:
        print("\n".join(shipped_configs()))
        return 0
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides: dict = {}
    for item in a.set:  # the keys and values are checked by load_config (or cooldown), naming the key
        key, sep, text = item.partition("=")
        if not sep:
            raise MaskdnError(f"--set {item}: expected key=value")
        overrides[key] = text if kinds.get(key) == "str" else _parse_value(text)
    overrides.update({k: v for k, v in (("data", a.data), ("out", a.out)) if v is not None})
    if a.cooldown is not None:
        from .train import cooldown

        if not a.config or not a.out or a.data is not None:
            raise MaskdnError("--cooldown N branches off a run: maskdn train RUN --cooldown N --out NEW_FOLDER")
        del overrides["out"]
        path = cooldown(a.config, a.cooldown, a.out, **overrides)
    else:
        path = train(load_config(a.config, overrides))
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {path}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``maskdn export``: write a run's EMA weights, config and training record.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.train.export`; :func:`main` prints it as one line.
    """
    from .train import export

    print(f"wrote {export(a.run, a.output)}")
    return 0


def _parse_value(text: str):
    """``--set`` values: JSON where it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``maskdn`` argument parser, one subcommand per ``cmd_*`` function (``args.func``).

    Returns:
        The parser; a subcommand is required.
    """
    p = argparse.ArgumentParser(prog="maskdn", description="Generalizable image denoising by masked image training.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"maskdn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("denoise", help="denoise image files, folders or globs")
    d.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    d.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    _add_denoise_options(d)
    d.set_defaults(func=cmd_denoise)

    n = sub.add_parser("noise", help="write seeded noisy copies of images (one folder per noise)")
    n.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    n.add_argument("-o", "--output", required=True, help="output folder")
    n.add_argument("--noise", nargs="+", required=True, help="noises written name:level, e.g. poisson:2")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--float", action="store_true", help="keep float values (16-bit PNG) instead of 8-bit quantizing")
    n.set_defaults(func=cmd_noise)

    m = sub.add_parser("models", help="list the bundled models")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_models)

    e = sub.add_parser("demo", help="denoise the bundled sample photos under a few noises")
    e.add_argument("-o", "--output", default="maskdn-demo", help="output folder (default: maskdn-demo)")
    e.add_argument("--model", default=None, help="zoo name or weights file")
    e.add_argument("--passes", type=int, default=1, help="stochastic passes to average")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_demo)

    v = sub.add_parser("evaluate", help="mean PSNR of a model per dataset and noise")
    v.add_argument("--model", default=None, help="zoo name or weights file; 'noisy' scores the noisy input itself")
    v.add_argument("--data", nargs="+", required=True, help="folders of clean images or *_real/*_mean pairs")
    v.add_argument("--noise", nargs="+", default=["gaussian:15", "gaussian:25", "poisson:2", "speckle:0.03", "saltpepper:0.02"],
                   help="noises written name:level (real-noise folders ignore them)")
    v.add_argument("--passes", type=int, default=1)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--limit", type=int, default=None, help="first N images per folder")
    v.add_argument("--tile", type=int, default=None, help="denoise in tiles (bounded memory)")
    v.add_argument("--record", action="store_true", help="store the scores in the weights file's training record")
    v.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="generalization benchmark: methods × noises × datasets, tables and plots")
    b.add_argument("--data", nargs="+", required=True, help="folders of clean images or *_real/*_mean pairs")
    b.add_argument("--model", nargs="*", default=[], help="zoo names or weights files")
    b.add_argument("--method", nargs="*", default=[],
                   help="built-in methods: noisy, nlm, bm3d (σ estimated), bm3d-oracle (true σ, gaussian/correlated only)")
    b.add_argument("--noise", nargs="*", default=None, help="noises name:level (default: the paper grid)")
    b.add_argument("--out", default="bench", help="output folder; an interrupted run resumes from it")
    b.add_argument("--passes", type=int, default=4, help="K for the K-pass score of stochastic models")
    b.add_argument("--limit", type=int, default=None, help="first N images per folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--jobs", type=int, default=1,
                   help="single-threaded worker processes for the methods and, on the CPU, the models; same results for any N")
    b.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=None,
                   help="score LPIPS (default: when the lpips package and AlexNet weights are available offline)")
    b.add_argument("--lpips-backbone", default=None, metavar="FILE",
                   help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth) for LPIPS; default: the torch hub cache")
    b.set_defaults(func=cmd_bench)

    y = sub.add_parser("analyze", help="feature statistics of models under several noises: histograms, distances, CKA")
    y.add_argument("--model", action="append", required=True, help="zoo name or weights file (repeat for several)")
    y.add_argument("--data", required=True, help="folder of images (or one image file)")
    y.add_argument("--noise", nargs="+", default=None,
                   help="noises name:level, the reference always added (default: gaussian:15 gaussian:50 poisson:2 "
                        "speckle:0.03 saltpepper:0.02 mixture:3)")
    y.add_argument("--reference", default=None, help="the noise compared against (default: gaussian:15, the training noise)")
    y.add_argument("--layer", action="extend", nargs="+", default=None,
                   help="feature points: embed, group0..groupN-1, body (default: all)")
    y.add_argument("--out", default="analysis", help="output folder")
    y.add_argument("--limit", type=int, default=None, help="first N images")
    y.add_argument("--crop", type=int, default=256, help="center crop side in pixels (0: whole images)")
    y.add_argument("--tokens", type=int, default=1024, help="token positions sampled per image")
    y.add_argument("--bins", type=int, default=100, help="histogram bins over the reference's range")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--device", default="cpu")
    y.set_defaults(func=cmd_analyze)

    t = sub.add_parser("train", help="train a model from a TOML config (rerun to resume; torchrun for DDP)")
    t.add_argument("config", nargs="?", default=None,
                   help="config file, run folder (resumes it) or shipped config name (see --list); "
                        "default: the TrainConfig defaults")
    t.add_argument("--data", default=None, help="folder of clean training images, e.g. CBSD432 (same as --set data=...)")
    t.add_argument("--out", default=None, help="run folder; rerun the same command to resume (same as --set out=...)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (JSON values), e.g. --set preset=tiny --set noise='[\"gaussian:25\"]'")
    t.add_argument("--cooldown", type=int, default=None, metavar="N",
                   help="branch off the wsd run CONFIG (a run folder): train N more iterations with the lr decayed "
                        "linearly towards 0 into --out and export them there; the run itself is left as it is")
    t.add_argument("--list", action="store_true", help="list the shipped configs and exit")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write a training run's EMA weights, config and training record")
    x.add_argument("run", help="run folder or its state.pt")
    x.add_argument("-o", "--output", required=True, help="output weights file (.safetensors)")
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``maskdn`` command.

    Args:
        argv: The arguments after the program name; ``None``: ``sys.argv[1:]``.

    Returns:
        The exit status: the subcommand's, 1 after a :class:`MaskdnError` (printed as one line on
        stderr), 130 after Ctrl-C.

    Raises:
        SystemExit: From argparse, for ``--help``, ``--version`` or invalid arguments (status 0 or 2).
    """
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # large CPU buffers otherwise page-fault on every use (docs/performance.md)
    try:
        return args.func(args)
    except MaskdnError as e:
        print(f"maskdn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maskdn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
