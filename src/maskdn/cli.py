"""The ``maskdn`` command: thin subcommands over the Python API.

Every user-facing problem is a :class:`MaskdnError`, printed as one line on stderr with exit status 1;
no traceback reaches the user. Warnings (e.g. a guessed attention-mask ratio) are one line each too.

One convention for every subcommand: ``-o/--out`` names the output; a flag that takes several values
(``--model`` where models are compared, ``--data``, ``--noise``, ``--method``) takes a list after one
flag and adds to it when repeated; ``--model`` where one model runs is an error when repeated. Every
subcommand that runs a model has ``--device``, ``--seed``, ``--passes`` (default 1), ``--tile``,
``--bf16`` and ``--attn-mask-ratio`` (``analyze``: no tiles, passes or bf16; it reads features).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
import warnings
from pathlib import Path

from .errors import MaskdnError
from .fastpath.runtime import keep_freed_memory

HIDDEN_ALIASES = frozenset({"--output"})
"""Old spellings still accepted but not shown by ``--help`` (``--output`` is now ``-o/--out``)."""

DEFAULT_PASSES = 1
"""``--passes`` of every subcommand: one stochastic pass unless asked."""

EVALUATE_NOISES = ("gaussian:15", "gaussian:25", "poisson:2", "speckle:0.03", "saltpepper:0.02")
"""``maskdn evaluate``'s noises when none are given: the training noise and four unseen ones."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` without the hidden aliases (:data:`HIDDEN_ALIASES`), epilogs kept as written."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [o for o in action.option_strings if o not in HIDDEN_ALIASES]
        if shown != action.option_strings:
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


class _Once(argparse.Action):
    """A flag that takes one value: given twice it is an error, never a silent overwrite."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            parser.error(f"{option_string} given twice: this subcommand runs one model "
                         "(maskdn bench or maskdn demo compare several)")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def _noise_epilog() -> str:
    """The noise names, their level ranges and meanings, and the ``name:level`` syntax, for ``--help``."""
    from .noise import NOISES

    lines = ["noises are written name:level, e.g. gaussian:25 poisson:2 jpeg:30 (real-noise pairs need none):"]
    for name, n in NOISES.items():
        kind = "integer " if n.integer else ""
        lines.append(f"  {name:<11} {kind}level {n.low:g}–{n.high:g}: {n.doc}")
    return "\n".join(lines)


def _add_out(p: argparse.ArgumentParser, help: str, **kw) -> None:
    p.add_argument("-o", "--out", "--output", dest="out", help=help, **kw)


def _add_model(p: argparse.ArgumentParser, several: bool, extra: str = "") -> None:
    if several:
        p.add_argument("--model", action="extend", nargs="+", default=None, metavar="MODEL",
                       help="zoo names or weights files: a list after one --model, or --model repeated (adds)" + extra)
    else:
        from .zoo import DEFAULT_MODEL

        p.add_argument("--model", action=_Once, default=None,
                       help=f"zoo name or weights file, one (default: {DEFAULT_MODEL}, the default zoo model)" + extra)


def _add_run_options(p: argparse.ArgumentParser, *, passes: bool = True, tile: bool = True, bf16: bool = True) -> None:
    """The options of every subcommand that runs a model."""
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for PyTorch's operations (default: PyTorch's, one per core)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attention masks and of any noise added (default: 0)")
    if passes:
        p.add_argument("--passes", type=int, default=DEFAULT_PASSES,
                       help=f"average K stochastic attention-mask passes per image (default: {DEFAULT_PASSES})")
    if tile:
        p.add_argument("--tile", type=int, default=None,
                       help="denoise in N×N tiles, N > the 32-pixel overlap: bounded memory (default: whole images, "
                            "in tiles when the whole would not fit in memory)")
    if bf16:
        p.add_argument("--bf16", action="store_true",
                       help="bfloat16 autocast: faster on CPUs/GPUs with bf16 units, within 0.05 dB")
    p.add_argument("--attn-mask-ratio", type=float, default=None, metavar="R",
                   help="fraction of attention keys masked, 0 (none) to <1; sets it for files that store no config "
                        "(the authors' .pth) or overrides the stored one (default: as stored or named)")


def _denoise_options(a: argparse.Namespace) -> dict:
    return dict(passes=a.passes, self_ensemble=a.self_ensemble, tile=a.tile, tile_overlap=a.tile_overlap,
                seed=a.seed, device=a.device, bf16=a.bf16, uncertainty=a.uncertainty)


def _warn(message: str) -> None:
    print(f"maskdn: warning: {message}", file=sys.stderr)


def _warn_skipped(specs) -> None:
    """One warning line per folder and reason for the files a folder input leaves out."""
    from .datasets import skipped_inputs

    groups: dict[tuple[Path, str], list[str]] = {}
    for path, why in skipped_inputs([s for s in specs if s is not None]):
        groups.setdefault((path.parent, why), []).append(path.name)
    for (folder, why), names in groups.items():
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        _warn(f"{folder}: skipped {len(names)} file(s), {why}: {', '.join(names[:3])}{more}")


def _check_out(path: str | os.PathLike, folder: bool) -> Path:
    """Refuse, before any work, an output that cannot be one: a link that leads nowhere, a file for a folder."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise MaskdnError(f"{path}: a broken symlink or a symlink loop; remove it or choose another output")
    if folder and path.exists() and not path.is_dir():
        raise MaskdnError(f"{path}: exists and is not a folder; choose another output folder")
    if not folder and path.is_dir():
        raise MaskdnError(f"{path}: is a folder; give a file name")
    return path


def _out_folder(path: str | os.PathLike) -> Path:
    """The output folder, checked (:func:`_check_out`) and created before any work."""
    from .io import make_output_dir

    return make_output_dir(_check_out(path, folder=True))


def _datasets(a: argparse.Namespace) -> list:
    """``--data`` folders plus ``--noisy``/``--clean`` pairs of folders (matched by file name)."""
    from .datasets import load_pairs, pairs_name

    noisy, clean = a.noisy or [], a.clean or []
    if len(noisy) != len(clean):
        raise MaskdnError(f"--noisy and --clean go in pairs: {len(noisy)} noisy and {len(clean)} clean folder(s)")
    data = list(a.data or [])
    if not data and not noisy:
        raise MaskdnError("give --data FOLDER... (clean images, or PolyU's *_real/*_mean pairs) or --noisy DIR --clean DIR")
    _warn_skipped([*data, *noisy, *clean])
    return data + [(pairs_name(n, c), load_pairs(n, c, a.limit)) for n, c in zip(noisy, clean)]


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
    from .inference import denoise_files, output_is_file

    _warn_skipped(a.inputs)
    model = a.model
    if a.attn_mask_ratio is not None:
        from .weights import load_model

        model = load_model(model, device=a.device, attn_mask_ratio=a.attn_mask_ratio)
    from .zoo import DEFAULT_MODEL

    is_file = output_is_file(a.out)  # before the run creates a folder there
    failures = denoise_files(a.inputs, a.out, model, max_pixels=a.max_pixels, **_denoise_options(a))
    name = a.model or DEFAULT_MODEL
    wrote = f"{a.out} (model {name})" if is_file else f"{Path(a.out)}/ (a folder, results named as their inputs; model {name})"
    return _report_failures(failures, wrote=wrote)


def _report_failures(failures: list[tuple[str, str]], wrote: str) -> int:
    """Print each failed file's line and their count, or ``wrote WROTE`` when none failed; the exit
    status (1 if any failed)."""
    for _, message in failures:
        print(f"maskdn: failed: {message}", file=sys.stderr)
    if failures:
        print(f"maskdn: {len(failures)} file(s) failed", file=sys.stderr)
    else:
        print(f"wrote {wrote}")
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
    from .noise import parse_noise, write_noisy_copies

    for spec in a.noise:
        parse_noise(spec)  # a bad spec is one line before the folder is created
    _warn_skipped(a.inputs)
    out = _out_folder(a.out)
    failures = write_noisy_copies(a.inputs, str(out), a.noise, seed=a.seed, quantize=not a.float)
    return _report_failures(failures, wrote=f"{out}/ (a folder per noise)")


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
        if t.get("source"):  # another project's release (IDF): who trained it, where it comes from, its licence
            print(f"{r['name']}{star}: {t.get('architecture', r['architecture'])}, {r['parameters']:,} parameters, "
                  f"deterministic (no masks)")
            print(f"  trained by {t.get('trained_by')} on {t.get('data')} with {t.get('noise')}: {t.get('iterations'):,} "
                  f"iterations × batch {t.get('batch_size')} of {t.get('patch_size')}² patches")
            print(f"  from {t['source']}; licence {t.get('licence')}")
        else:
            imask = t.get("input_mask")
            masks = (f"attention mask {r['attn_mask_ratio']:.0%}, input mask "
                     + (f"{imask[0]:.0%}–{imask[1]:.0%}" if imask else "off"))
            if not imask and not r["attn_mask_ratio"]:
                masks = "unmasked baseline (no input or attention mask)"
            print(f"{r['name']}{star}: preset {r['preset']}, {r['parameters']:,} parameters, {masks}")
            if t:
                print(f"  trained on {t.get('data')} with {t.get('noise')}: {t.get('iterations')} iterations × "
                      f"batch {t.get('batch_size')} of {t.get('patch_size')}² patches ({t.get('patches_seen'):,} "
                      f"patches), {_training_time(t)}")
        for dataset, scores in s.items():
            cells = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            print(f"  PSNR dB on {dataset}: {cells}")
    return 0


def _training_time(record: dict) -> str:
    """A weights file's training time from its training record, split by kind of device when it has
    ``device_time_s`` (:func:`maskdn.train.checkpoint.training_record`)."""
    on_cpu = f"on {record.get('threads')} CPU thread(s)"
    parts = record.get("device_time_s") or {"cpu": record.get("wall_time_s", 0)}
    if set(parts) == {"cpu"}:
        return f"{parts['cpu'] / 60:.0f} min {on_cpu}"
    where = {"cpu": on_cpu, "cuda": "on CUDA", "unknown": "on a device not recorded"}
    return ", ".join(f"{v / 60:.0f} min {where.get(k, 'on ' + k)}" for k, v in sorted(parts.items()))


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

    result = run_demo(_check_out(a.out, folder=True), a.model, seed=a.seed, passes=a.passes, device=a.device,
                      tile=a.tile, bf16=a.bf16, attn_mask_ratio=a.attn_mask_ratio)
    print(result["table"])
    print(f"\nwrote {Path(a.out)}/ (comparison.png, psnr.md, psnr.json, noisy/ and denoised/<model>/ images)")
    return 0


def _is_bundled(path: Path) -> bool:
    from .zoo import zoo_dir

    try:
        return path.resolve().parent == zoo_dir().resolve()
    except OSError:
        return False


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``maskdn evaluate``: mean PSNR and SSIM per dataset and noise (``-o``: CSV/JSON; ``--record``: into weights).

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: ``--record`` with ``noisy``, on a bundled model without a copy to write, or on a
            file that is not a maskdn weights file; an output that is not ``.csv``/``.json``; ``--reuse``
            of missing results or with ``--attn-mask-ratio``; or from loading, evaluating or
            recording; :func:`main` prints it as one line.
    """
    from .evaluate import check_scores_path, evaluate_rows, rows_table, write_scores
    from .generalization import method_name
    from .weights import load_model, read_metadata, update_training_record
    from .zoo import DEFAULT_MODEL, resolve

    record_to = None
    if a.record:
        if a.model == "noisy":
            raise MaskdnError("--record needs a model file, not noisy")
        source = resolve(a.model)
        read_metadata(source)  # a maskdn weights file, or one line before any work
        record_to = source if a.record is True else _check_out(a.record, folder=False)
        if record_to == source and _is_bundled(source):
            raise MaskdnError(f"--record: {source.stem} is a bundled model; the installed package is never changed. "
                              f"Record into a copy: --record {source.stem}.safetensors")
    if a.out is not None:
        check_scores_path(_check_out(a.out, folder=False))
    data = _datasets(a)
    noises = a.noise or list(EVALUATE_NOISES)
    reuse = []
    if a.reuse:
        if a.attn_mask_ratio is not None:
            raise MaskdnError("--reuse: the benchmark records do not say which attention-mask ratio made them; "
                              "leave out --attn-mask-ratio or --reuse")
        reuse = _load_results_args(a.reuse)
    model = None if a.model == "noisy" else load_model(a.model, device=a.device, attn_mask_ratio=a.attn_mask_ratio)
    rows = evaluate_rows(model, data, noises, seed=a.seed, passes=a.passes, limit=a.limit, tile=a.tile, bf16=a.bf16,
                         reuse=reuse, reuse_method=method_name(a.model or DEFAULT_MODEL))
    print(rows_table(rows))
    protocol = {"model": a.model or "default", "seed": a.seed, "passes": a.passes, "limit": a.limit,
                "note": "mean PSNR (dB) and SSIM on 8-bit RGB levels of maskdn evaluate; noisy inputs clipped and "
                        "8-bit quantized"}
    if a.out is not None:
        print(f"wrote {write_scores(rows, a.out, protocol)}")
    if record_to is not None:
        scores: dict[str, dict[str, float]] = {}
        for r in rows:
            scores.setdefault(r["dataset"], {})[r["condition"]] = r["psnr"]
        protocol = {k: v for k, v in protocol.items() if k != "model"}
        protocol["note"] = "mean PSNR (dB, RGB, 8-bit) of maskdn evaluate; noisy inputs clipped and 8-bit quantized"
        update_training_record(source, dest=None if record_to == source else record_to, scores=scores,
                               scores_protocol=protocol)
        print(f"recorded the scores in {record_to}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    """``maskdn bench``: run the generalization benchmark and print its summary.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: no ``--model`` or ``--method``, no data, or from
            :func:`maskdn.generalization.run_bench`; :func:`main` prints it as one line.
    """
    from .generalization import PAPER_GRID, run_bench

    methods = [*(a.model or []), *(a.method or [])]
    if not methods:
        raise MaskdnError("give at least one --model or --method")
    data = _datasets(a)
    out = _check_out(a.out, folder=True)  # created by run_bench once the arguments are checked
    lpips = True if a.lpips_backbone else a.lpips
    records = run_bench(data, methods, a.noise or PAPER_GRID, out, seed=a.seed, passes=a.passes,
                        limit=a.limit, device=a.device, jobs=a.jobs, lpips=lpips, lpips_backbone=a.lpips_backbone,
                        bf16=a.bf16, tile=a.tile, attn_mask_ratio=a.attn_mask_ratio)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    print(summary)
    if lpips and not any("lpips" in r for r in records):
        why = next((line[2:] for line in summary.splitlines() if line.startswith("- LPIPS not computed")), "")
        _warn(why or "LPIPS not computed")
    print(f"\nwrote {Path(a.out)}/ (results.json, summary.csv, summary.md, curves.png, gallery.png)")
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

    _warn_skipped([a.data])
    result = analyze(a.model, a.data, a.noise, _check_out(a.out, folder=True), layers=a.layer, reference=a.reference,
                     limit=a.limit, crop=a.crop, tokens=a.tokens, bins=a.bins, seed=a.seed, device=a.device,
                     attn_mask_ratio=a.attn_mask_ratio)
    print(summary_markdown(result))
    print(f"\nwrote {Path(a.out)}/ (analysis.json, summary.md, cka.png, histograms_<model>.png)")
    return 0


def _load_results_args(given: list[str]) -> list[dict]:
    """The records of ``maskdn bench`` results named on the command line (files or their folders)."""
    from .generalization import read_records

    return [r for item in given for r in read_records(item)]


def _condition_name(spec: str) -> str:
    """``--exclude``'s ``name:level`` as the benchmark records name it (``gaussian:15.0`` → ``gaussian:15``).

    Raises:
        MaskdnError: ``"--exclude SPEC: ..."`` for an unknown noise or a level out of its range.
    """
    from .noise import parse_noise
    from .report import condition_of

    try:
        noise = parse_noise(spec)
    except MaskdnError as e:
        raise MaskdnError(f"--exclude {e}") from None
    return condition_of({"noise": noise.name, "level": noise.level})


def cmd_rank(a: argparse.Namespace) -> int:
    """``maskdn rank``: the default-model rule applied to benchmark results.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: a results file that cannot be read (:func:`maskdn.generalization.load_results`),
            none given, an ``--exclude`` that is not a noise condition, or ``--out`` unwritable;
            :func:`main` prints it as one line.
    """
    from . import zoo
    from .report import generalization_ranking, ranking_markdown, rule_choice, write_text

    exclude = [c if c == "real" else _condition_name(c) for c in a.exclude]
    records = _load_results_args(a.results)
    ranking = generalization_ranking(records, exclude)
    chosen, why = rule_choice(ranking, zoo.names())
    print(ranking_markdown(ranking))
    print()
    if chosen is None:
        print(why)
    else:
        same = "it is" if chosen == zoo.DEFAULT_MODEL else f"maskdn's default is still {zoo.DEFAULT_MODEL}"
        print(f"{why} ({same})")
    if a.out:
        out = _check_out(a.out, folder=False)
        doc = {"rule": "mean PSNR (dB) out of distribution (conditions other than "
                       f"{', '.join(exclude)}), each dataset weighted equally",
               "results": [str(r) for r in a.results], "chosen": chosen, "default": zoo.DEFAULT_MODEL,
               "ranking": ranking}
        write_text(out, json.dumps(doc, indent=1) + "\n")
    return 0


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str, option: str) -> float:
    """Seconds in a duration such as ``3600``, ``90s``, ``45m``, ``2h`` or ``1h30m``.

    Raises:
        MaskdnError: ``"OPTION TEXT: expected a duration ..."`` for anything else, or zero.
    """
    m = _DURATION.fullmatch(text.strip().lower())
    seconds = sum(float(v) * k for v, k in zip(m.groups(), (3600, 60, 1)) if v) if m else 0.0
    if seconds <= 0:
        raise MaskdnError(f"{option} {text}: expected a positive duration such as 3600, 90s, 45m, 2h or 1h30m")
    return seconds


def cmd_train(a: argparse.Namespace) -> int:
    """``maskdn train``: train or resume a run, or branch a wsd cool-down (``--cooldown``).

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status: 0 when the run finished or stopped at ``--time-limit`` (state saved), 128 + the
        signal's number when SIGTERM or Ctrl-C stopped it after saving its state (143, 130).

    Raises:
        MaskdnError: a ``--set`` item without ``=``, a ``--time-limit`` that is not a duration,
            ``--cooldown`` without a run and ``--out`` (or with ``--data``), or from :func:`maskdn.train.load_config`, :func:`maskdn.train.train` or
            :func:`maskdn.train.cooldown`; :func:`main` prints it as one line.
    """
    import os
    import signal

    from .train import TrainConfig, TrainingStopped, load_config, shipped_configs, train

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
    limit = 0.0 if a.time_limit is None else parse_duration(a.time_limit, "--time-limit")
    try:
        if a.cooldown is not None:
            from .train import cooldown

            if not a.config or not a.out or a.data is not None:
                raise MaskdnError("--cooldown N branches off a run: maskdn train RUN --cooldown N --out NEW_FOLDER")
            del overrides["out"]
            path = cooldown(a.config, a.cooldown, a.out, time_limit=limit, **overrides)
        else:
            path = train(load_config(a.config, overrides), time_limit=limit)
    except TrainingStopped as e:  # asked to stop, state saved: not an error (TrainingStopped says why)
        print(f"maskdn: {e}", file=sys.stderr)
        return 128 + signal.Signals[e.signal].value if e.signal else 0
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {path}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``maskdn export-weights`` (also ``export``): write a run's EMA weights, config and training record.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.train.export`; :func:`main` prints it as one line.
    """
    from .train import export

    print(f"wrote {export(a.run, _check_out(a.out, folder=False))}")
    return 0


def cmd_export_onnx(a: argparse.Namespace) -> int:
    """``maskdn export-onnx``: write a deterministic model as an ONNX graph, checked with ONNX Runtime.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.onnx_export.export_onnx` (a stochastic model, the extra
            missing, an export failure); :func:`main` prints it as one line.
    """
    from .onnx_export import export_onnx

    h, w = a.size
    info = export_onnx(a.model, _check_out(a.out, folder=False), size=(h, w), dynamic=not a.static, opset=a.opset)
    shape = "[B, C, H, W], any B, H and W >= 8" if info["dynamic"] else f"[1, {info['channels']}, {h}, {w}]"
    check = ("not checked: onnxruntime is not installed" if info["max_abs_diff"] is None
             else f"ONNX Runtime matches PyTorch to {info['max_abs_diff']:.1e}")
    print(f"wrote {info['path']}: input 'image' {shape} float32 in [0, 1], output 'denoised'; {check}")
    return 0


def cmd_app(a: argparse.Namespace) -> int:
    """``maskdn app``: serve the web page (Gradio) until Ctrl-C.

    Args:
        a: the parsed arguments of the subcommand.

    Returns:
        the exit status.

    Raises:
        MaskdnError: from :func:`maskdn.app.launch` (the extra missing, a bad device or port);
            :func:`main` prints it as one line.
    """
    from .app import launch

    out = _out_folder(a.out) if a.out is not None else None
    blocks = launch(host=a.host, port=a.port, device=a.device, open_browser=a.open, out_dir=out)
    print(f"maskdn app: open {blocks.local_url} in a browser (Ctrl-C stops it)")
    blocks.block_thread()
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
    p = argparse.ArgumentParser(prog="maskdn", description="Generalizable image denoising by masked image training.",
                                formatter_class=_HelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"maskdn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    noises = _noise_epilog()

    def command(name: str, help: str, epilog: str | None = None, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=_HelpFormatter, **kw)

    def data_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", action="extend", nargs="+", default=None, metavar="FOLDER",
                       help="folders of clean images (noise is added) or of PolyU-style *_real/*_mean pairs")
        q.add_argument("--noisy", action="extend", nargs="+", default=None, metavar="DIR",
                       help="folders of noisy photos, each scored against the --clean folder in the same position, "
                            "images matched by file name")
        q.add_argument("--clean", action="extend", nargs="+", default=None, metavar="DIR",
                       help="folders of the clean references of --noisy")
        q.add_argument("--limit", type=int, default=None, help="first N images per dataset (default: all)")

    d = command("denoise", "denoise image files, folders or globs")
    d.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    _add_out(d, "output file (one input; its suffix picks the format) or folder", required=True)
    _add_model(d, several=False)
    _add_run_options(d)
    d.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles in pixels (default: 32)")
    d.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations (8× the time)")
    d.add_argument("--uncertainty", action="store_true",
                   help="also write each output's per-pixel std of the passes (a masked model, --passes 2 or more): "
                        "NAME_std.tif (float32, [0, 1] units) and NAME_std.png (with a colour bar)")
    d.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest image (width × height) read, checked before decoding: a guard against "
                        "decompression bombs (default: 89,478,485; with --tile 357,913,940)")
    d.set_defaults(func=cmd_denoise)

    n = command("noise", "write seeded noisy copies of images (one folder per noise)", noises)
    n.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    _add_out(n, "output folder", required=True)
    n.add_argument("--noise", action="extend", nargs="+", required=True, metavar="NAME:LEVEL",
                   help="noises, e.g. poisson:2 (see below)")
    n.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    n.add_argument("--float", action="store_true", help="keep float values (16-bit PNG) instead of 8-bit quantizing")
    n.set_defaults(func=cmd_noise)

    m = command("models", "list the bundled models")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_models)

    r = command("rank", "the default-model rule on benchmark results: mean PSNR out of distribution, datasets "
                        "weighted equally", "example: maskdn rank bench-grid/ bench-polyu/ --out ranking.json")
    r.add_argument("results", nargs="+", metavar="RESULTS", help="results.json files of maskdn bench (or .json.gz), or their folders")
    r.add_argument("--exclude", nargs="+", default=["gaussian:15"], metavar="NAME:LEVEL",
                   help="the in-distribution conditions left out (default: gaussian:15)")
    _add_out(r, "also write the ranking to FILE.json")
    r.set_defaults(func=cmd_rank)

    e = command("demo", "the bundled models side by side on the bundled sample photos under a few noises")
    _add_out(e, "output folder (default: maskdn-demo)", default="maskdn-demo")
    _add_model(e, several=True, extra=" (default: every bundled model)")
    _add_run_options(e)
    e.set_defaults(func=cmd_demo)

    v = command("evaluate", "mean PSNR and SSIM of a model per dataset and noise", noises)
    _add_model(v, several=False, extra="; 'noisy' scores the noisy input itself")
    data_options(v)
    v.add_argument("--noise", action="extend", nargs="+", default=None, metavar="NAME:LEVEL",
                   help=f"noises for the clean-image folders (default: {' '.join(EVALUATE_NOISES)})")
    _add_run_options(v)
    _add_out(v, "also write the scores to FILE.csv or FILE.json")
    v.add_argument("--reuse", action="extend", nargs="+", default=None, metavar="RESULTS",
                   help="results.json files of maskdn bench (or their folders) made with the same weights: "
                        "their records of this model under the same noise and seed are taken, not recomputed")
    v.add_argument("--record", nargs="?", const=True, default=None, metavar="FILE",
                   help="store the PSNRs in the weights file's training record; with FILE, in a copy written there "
                        "(needed for a bundled model: the installed package is never changed)")
    v.set_defaults(func=cmd_evaluate)

    b = command("bench", "generalization benchmark: methods × noises × datasets, tables and plots", noises)
    data_options(b)
    _add_model(b, several=True)
    b.add_argument("--method", action="extend", nargs="+", default=None, metavar="METHOD",
                   help="built-in methods: noisy, nlm, bm3d (σ estimated), bm3d-oracle (true σ, gaussian/correlated only)")
    b.add_argument("--noise", action="extend", nargs="+", default=None, metavar="NAME:LEVEL",
                   help="noises for the clean-image folders (default: the paper's grid)")
    _add_out(b, "output folder; an interrupted run resumes from it (default: bench)", default="bench")
    _add_run_options(b)
    b.add_argument("--jobs", type=int, default=1,
                   help="single-threaded worker processes for the methods and, on the CPU, the models; same results for any N")
    b.add_argument("--lpips", action=argparse.BooleanOptionalAction, default=None,
                   help="score LPIPS (default: when the lpips package and AlexNet weights are available offline)")
    b.add_argument("--lpips-backbone", default=None, metavar="FILE",
                   help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth) for LPIPS; default: the torch hub cache")
    b.set_defaults(func=cmd_bench)

    y = command("analyze", "feature statistics of models under several noises: histograms, distances, CKA", noises)
    _add_model(y, several=True)
    y.add_argument("--data", required=True, help="folder of images (or one image file)")
    y.add_argument("--noise", action="extend", nargs="+", default=None, metavar="NAME:LEVEL",
                   help="noises, the reference always added (default: gaussian:15 gaussian:50 poisson:2 "
                        "speckle:0.03 saltpepper:0.02 mixture:3)")
    y.add_argument("--reference", default=None, help="the noise compared against (default: gaussian:15, the training noise)")
    y.add_argument("--layer", action="extend", nargs="+", default=None,
                   help="feature points: embed, group0..groupN-1, body (default: all)")
    _add_out(y, "output folder (default: analysis)", default="analysis")
    y.add_argument("--limit", type=int, default=None, help="first N images (default: all)")
    y.add_argument("--crop", type=int, default=256, help="center crop side in pixels; 0: whole images (default: 256)")
    y.add_argument("--tokens", type=int, default=1024, help="token positions sampled per image (default: 1024)")
    y.add_argument("--bins", type=int, default=100, help="histogram bins over the reference's range (default: 100)")
    _add_run_options(y, passes=False, tile=False, bf16=False)
    y.set_defaults(func=cmd_analyze)

    t = command("train", "train a model from a TOML config (rerun to resume; torchrun for DDP)")
    t.add_argument("config", nargs="?", default=None,
                   help="config file, run folder (resumes it) or shipped config name (see --list); "
                        "default: the TrainConfig defaults")
    t.add_argument("--data", default=None, help="folder of clean training images, e.g. CBSD432 (same as --set data=...)")
    _add_out(t, "run folder; rerun the same command to resume (same as --set out=...)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (JSON values), e.g. --set preset=tiny --set noise='[\"gaussian:25\"]'")
    t.add_argument("--cooldown", type=int, default=None, metavar="N",
                   help="branch off the wsd run CONFIG (a run folder): train N more iterations with the lr decayed "
                        "linearly towards 0 into --out and export them there; the run itself is left as it is")
    t.add_argument("--time-limit", default=None, metavar="DURATION",
                   help="stop at the first iteration after DURATION (3600, 90s, 45m, 2h, 1h30m), save the state and "
                        "exit 0; rerun to resume (e.g. within a job's or a session's time)")
    t.add_argument("--list", action="store_true", help="list the shipped configs and exit")
    t.set_defaults(func=cmd_train)

    x = command("export-weights", "write a training run's EMA weights, config and training record (alias: export)",
                aliases=["export"])
    x.add_argument("run", help="run folder or its state.pt")
    _add_out(x, "output weights file (.safetensors)", required=True)
    x.set_defaults(func=cmd_export)

    o = command("export-onnx", "write a deterministic model (unmasked SwinIR, IDF) as an ONNX graph, checked "
                "with ONNX Runtime; masked models are stochastic and refused (docs/interop.md)")
    _add_model(o, several=False)
    _add_out(o, "output file (.onnx)", required=True)
    o.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"),
                   help="example image traced, in pixels (default: 64 64)")
    o.add_argument("--static", action="store_true",
                   help="fix the input to [1, C, H, W] of --size (faster to export); default: any batch, height, width")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    o.set_defaults(func=cmd_export_onnx)

    w = command("app", "a local web page: drop a photo, choose a model, see noisy and denoised side by side "
                "(the app extra; docs/app.md)")
    _add_out(w, "folder for the downloadable results (default: a temporary folder per run)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this computer only)")
    w.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    w.add_argument("--device", default="cpu", help="torch device the models run on (default: cpu)")
    w.add_argument("--open", action="store_true", help="open the page in the default browser")
    w.set_defaults(func=cmd_app)

    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (``maskdn: warning: ...``), without the source line."""
    _warn(str(message).strip().splitlines()[0] if str(message).strip() else category.__name__)


def main(argv: list[str] | None = None) -> int:
    """Run the ``maskdn`` command.

    Args:
        argv: The arguments after the program name; ``None``: ``sys.argv[1:]``.

    Returns:
        The exit status: the subcommand's, 1 after a :class:`MaskdnError` (printed as one line on
        stderr), 130 after Ctrl-C, 141 when the reader of the output went away (``| head``).

    Raises:
        SystemExit: From argparse, for ``--help``, ``--version`` or invalid arguments (status 0 or 2).
    """
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # large CPU buffers otherwise page-fault on every use (docs/performance.md)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if getattr(args, "device", None) is not None:
                from .devices import resolve_device

                resolve_device(args.device)  # one line before any work, on every subcommand
            if getattr(args, "threads", None) is not None:
                if args.threads < 1:
                    raise MaskdnError(f"--threads {args.threads}: expected a positive number of threads")
                import torch

                torch.set_num_threads(args.threads)
            status = args.func(args)
            sys.stdout.flush()  # a closed pipe (maskdn models | head) shows here, inside the handler
            return status
    except MaskdnError as e:
        print(f"maskdn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("maskdn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away: stop quietly, as head/grep expect (Python docs, signal module)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
