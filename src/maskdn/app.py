"""``maskdn app``: a local web page to denoise a photo by dropping it (Gradio, the ``app`` extra).

Upload an image (or pick a bundled sample), choose a model (every zoo entry), the passes and the
tiling, optionally add a noise first to see how the model copes; the page shows noisy and denoised
side by side with a before/after slider, PSNR/SSIM when a clean image exists (the upload itself,
when a noise was added to it), the uncertainty map of a masked model (:mod:`maskdn.uncertainty`),
and a button that downloads the full-resolution result in the input's format and bit depth.

Everything runs locally and offline on the CPU (``--device`` for another): the page uses system fonts
and no analytics, and nothing is shared. The work is :func:`process`, a plain function (the tests call
it directly); :func:`build_app` lays out the page around it and :func:`launch` serves it. A bad upload
gives the same one-line message as the command line (the :class:`MaskdnError`), shown on the page.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import zoo
from .errors import MaskdnError, check_int
from .io import IMAGE_SUFFIXES, from_float_rgb, make_output_dir, read_image, to_float_rgb, write_image

__all__ = ["APP_NOISES", "AppResult", "build_app", "launch", "process"]

NO_NOISE = "none (the upload is noisy)"
APP_NOISES = (NO_NOISE, "gaussian:15", "gaussian:25", "gaussian:50", "poisson:2", "poisson:3", "speckle:0.03",
              "saltpepper:0.02", "mixture:3", "correlated:50", "jpeg:10", "camera:3")
"""The noise menu: none, Gaussian σ=15 (the bundled models' training noise), then unseen noises (any
``name:level`` of :mod:`maskdn.noise` can be typed in)."""

PREVIEW_SIDE = 1600
"""Longest side in pixels of the images shown on the page (the download is always full resolution)."""


@dataclass
class AppResult:
    """What one run of :func:`process` shows and offers.

    Attributes:
        noisy: The model's input as shown: RGB uint8 ``[h, w, 3]``, at most :data:`PREVIEW_SIDE` pixels.
        denoised: The result as shown, same size.
        download: The full-resolution result, in the input's format, bit depth and mode.
        metrics: A Markdown summary: image size, model, passes, time, and PSNR/SSIM (dB / 0–1, on
            8-bit RGB levels) of the noisy input and the result when a noise was added.
        uncertainty: The std map's figure with its colour bar (RGB uint8), or None (a deterministic
            model, or one pass).
        scores: ``{"noisy": (psnr, ssim), "denoised": (psnr, ssim)}``; empty without a clean image.
    """

    noisy: np.ndarray
    denoised: np.ndarray
    download: Path
    metrics: str
    uncertainty: np.ndarray | None = None
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)


_MODELS: dict[tuple[str, str], Any] = {}


def _model(name: str, device: str) -> Any:
    """A zoo model loaded once per process (the page reuses it between runs)."""
    key = (name, device)
    if key not in _MODELS:
        from .weights import load_model

        _MODELS[key] = load_model(name, device=device)
    return _MODELS[key]


def _preview(array: np.ndarray) -> np.ndarray:
    """Any native image → RGB uint8 for the page, shrunk to :data:`PREVIEW_SIDE` on its long side."""
    from PIL import Image

    x, _ = to_float_rgb(array)
    rgb = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    h, w = rgb.shape[:2]
    if max(h, w) <= PREVIEW_SIDE:
        return rgb
    s = PREVIEW_SIDE / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))


def _output_suffix(path: Path) -> str:
    """The input's suffix where maskdn writes that format, else ``.png`` (lossless, 16-bit capable)."""
    suffix = path.suffix.lower()
    return path.suffix if suffix in IMAGE_SUFFIXES else ".png"


def process(
    path: str | os.PathLike,
    model: str | None = None,
    *,
    passes: int = 1,
    tile: int | None = None,
    noise: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    out_dir: str | os.PathLike | None = None,
    progress: Any = None,
) -> AppResult:
    """Denoise one image file as the page does: optional noise, model, passes, tiles, scores, map, file.

    Args:
        path: The uploaded image (any format :func:`maskdn.io.read_image` reads).
        model: A zoo name (None: the default model).
        passes: Stochastic passes averaged (int >= 1); with a masked model and 2 or more, the
            uncertainty map is made too.
        tile: Tile side in pixels (None or 0: the whole image at once).
        noise: A noise ``name:level`` added to the image first (seeded, clipped, 8-bit quantized as
            ``maskdn noise`` does); then the upload is the clean reference and PSNR/SSIM are given.
            None, ``""`` or :data:`NO_NOISE`: the upload is denoised as it is.
        seed: Seed of the noise and of the attention masks.
        device: Where the model runs.
        out_dir: Folder of the downloadable result, created if missing (None: a new temporary folder).
        progress: A callable ``progress(fraction, desc=...)`` (Gradio's ``gr.Progress``), or None.

    Returns:
        An :class:`AppResult`.

    Raises:
        MaskdnError: One line naming the file or option: an unreadable upload, an unknown model or
            noise, invalid passes or tile, or a failed write.
    """
    import time

    from .inference import denoise
    from .metrics import psnr, ssim
    from .noise import apply_noise, noise_seed
    from .uncertainty import check_uncertainty, colorbar_figure

    say = progress or (lambda *a, **k: None)
    path = Path(path)
    check_int("passes", passes)
    tile = tile or None
    noise = None if noise in (None, "", NO_NOISE) else noise.strip()
    say(0.0, desc="reading the image")
    image = read_image(path)
    clean, info = to_float_rgb(image)
    if noise is not None:
        say(0.05, desc=f"adding {noise}")
        noisy_float = apply_noise(clean, noise, seed=noise_seed(seed, path.name, noise))
        noisy = from_float_rgb(noisy_float, info).astype(image.dtype, copy=False)
    else:
        noisy = image
    say(0.1, desc=f"loading {model or zoo.DEFAULT_MODEL}")
    net = _model(model or zoo.DEFAULT_MODEL, device)
    try:
        check_uncertainty(net, passes)
        with_map = True
    except MaskdnError:
        with_map = False
    say(0.15, desc="denoising")
    start = time.perf_counter()
    result = denoise(noisy, net, passes=passes, tile=tile, seed=seed, device=device, progress=True,
                     uncertainty=with_map)
    seconds = time.perf_counter() - start
    result, std_map = result if with_map else (result, None)
    say(0.9, desc="writing the result")
    folder = make_output_dir(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="maskdn-app-"))
    download = write_image(folder / f"{path.stem}_denoised{_output_suffix(path)}", result)
    h, w = image.shape[:2]
    lines = [f"**{path.name}**, {w}×{h}, {image.dtype}; model **{model or zoo.DEFAULT_MODEL}**, "
             f"{passes if with_map or passes == 1 else f'{passes} (1: deterministic model)'} pass(es), "
             f"{'tiles of ' + str(tile) if tile else 'whole image'}; {seconds:.1f} s"]
    scores: dict[str, tuple[float, float]] = {}
    if noise is not None:
        est, _ = to_float_rgb(result)
        for label, x in (("noisy", noisy_float), ("denoised", est)):
            scores[label] = (psnr(x, clean), ssim(x, clean))
        lines.append(f"\n| | PSNR (dB) | SSIM |\n|---|---|---|\n"
                     f"| noisy ({noise}) | {scores['noisy'][0]:.2f} | {scores['noisy'][1]:.3f} |\n"
                     f"| denoised | {scores['denoised'][0]:.2f} | {scores['denoised'][1]:.3f} |")
    else:
        lines.append("\nNo clean image: choose a noise to add to score the result (PSNR/SSIM on 8-bit RGB).")
    figure = None
    if std_map is not None:
        figure = colorbar_figure(std_map, f"std of {passes} passes, mean {float(std_map.mean()) * 255:.2f} levels")
    say(1.0, desc="done")
    return AppResult(_preview(noisy), _preview(result), download, "\n".join(lines), figure, scores)


def _theme():
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web font: the page works offline
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def build_app(device: str = "cpu", models: list[str] | None = None, out_dir: str | os.PathLike | None = None) -> Any:
    """The page as a ``gradio.Blocks`` (not started; :func:`launch` serves it).

    Element ids for scripts and tests: ``upload`` (file input), ``model``, ``passes``, ``tile``,
    ``noise``, ``seed``, ``run`` (the button), ``compare`` (the before/after slider), ``metrics``,
    ``uncertainty``, ``download``.

    Args:
        device: Where the models run.
        models: The model menu (default: every zoo entry, the default model first).
        out_dir: Folder of the downloadable results (None: a new temporary folder per run).

    Returns:
        The ``gradio.Blocks``.

    Raises:
        MaskdnError: Gradio is not installed (``pip install 'maskdn[app]'``).
    """
    gr = _gradio()
    from .demo import sample_paths

    names = models or zoo.names_default_first()

    def run(upload, model, passes, tile, noise, seed, progress=gr.Progress(track_tqdm=True)):
        if upload is None:
            raise gr.Error("choose an image first (drop a file or pick a sample)")
        path = upload if isinstance(upload, str) else getattr(upload, "name", upload)
        try:
            r = process(path, model, passes=int(passes), tile=int(tile or 0), noise=noise, seed=int(seed),
                        device=device, out_dir=out_dir, progress=progress)
        except MaskdnError as e:  # the CLI's one line, naming the upload by its name, not Gradio's temporary path
            raise gr.Error(str(e).replace(str(path), Path(path).name), print_exception=False) from None
        return ((r.noisy, r.denoised), r.metrics, gr.update(value=r.uncertainty, visible=r.uncertainty is not None),
                gr.update(value=str(r.download), interactive=True))

    with gr.Blocks(title="maskdn: denoise a photo", analytics_enabled=False) as blocks:
        gr.Markdown("## maskdn: denoise a photo\nDrop an image, choose a model, press **Denoise**. "
                    "Everything runs on this computer.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image (PNG, TIFF, JPEG, BMP; 8/16-bit, gray, RGBA)", file_count="single",
                                 type="filepath", elem_id="upload")
                gr.Examples([[str(p)] for p in sample_paths()], inputs=[upload], label="or a bundled sample")
                model = gr.Dropdown(names, value=names[0] if names else None, label="model", elem_id="model")
                passes = gr.Slider(1, 16, value=1, step=1, label="passes (masked models: 2+ also give the "
                                   "uncertainty map)", elem_id="passes")
                tile = gr.Number(value=0, precision=0, minimum=0, label="tile side in pixels (0: whole image)",
                                 elem_id="tile")
                noise = gr.Dropdown(list(APP_NOISES), value=NO_NOISE, allow_custom_value=True,
                                    label="add a noise first (then PSNR/SSIM are shown)", elem_id="noise")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                button = gr.Button("Denoise", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                compare = gr.ImageSlider(label="noisy | denoised (drag the handle)", type="numpy", format="png",
                                         elem_id="compare", max_height=640)
                metrics = gr.Markdown(elem_id="metrics")
                unc = gr.Image(label="uncertainty: per-pixel std of the passes", visible=False, format="png",
                               elem_id="uncertainty")
                download = gr.DownloadButton("Download the full-resolution result", interactive=False,
                                             elem_id="download")
        button.click(run, [upload, model, passes, tile, noise, seed], [compare, metrics, unc, download])
    return blocks


def _gradio() -> Any:
    """The gradio module, imported offline (no analytics), or one line naming the extra."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise MaskdnError("maskdn app needs the app extra: pip install 'maskdn[app]'") from None
    return gradio


def launch(host: str = "127.0.0.1", port: int | None = None, device: str = "cpu", open_browser: bool = False,
           out_dir: str | os.PathLike | None = None) -> Any:
    """Start serving the page on ``http://host:port`` in a thread (local only by default, never shared).

    The caller prints ``blocks.local_url`` and, to serve until Ctrl-C, calls ``blocks.block_thread()``
    (as ``maskdn app`` does); ``blocks.close()`` stops it.

    Args:
        host: The address to listen on (``0.0.0.0``: every interface of this machine).
        port: The port (None: Gradio's default 7860, or the next free one).
        device: Where the models run (:func:`maskdn.devices.resolve_device` checks it).
        open_browser: Open the page in the default browser.
        out_dir: Folder of the downloadable results (None: a new temporary folder per run).

    Returns:
        The running ``gradio.Blocks``.

    Raises:
        MaskdnError: Gradio missing, an unknown device, or a port in use (one line).
    """
    from .devices import resolve_device

    device = str(resolve_device(device))
    blocks = build_app(device=device, out_dir=out_dir)
    try:
        blocks.launch(server_name=host, server_port=port, inbrowser=open_browser, share=False, quiet=True,
                      prevent_thread_lock=True, theme=_theme(), show_error=True)
    except OSError as e:
        raise MaskdnError(f"cannot serve on {host}:{port} ({e})") from None
    return blocks
