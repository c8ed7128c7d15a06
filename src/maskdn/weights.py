"""Loading and saving model weights, ours and the authors'.

Our files are safetensors whose metadata carries the architecture (``maskdn.architecture``:
``masked-swinir``, the default when absent, or ``idf``), its config (``maskdn.config``: a
:class:`ModelConfig` or :class:`~maskdn.idf.IDFConfig`) and a short training record
(``maskdn.training``), so :func:`load_model` needs nothing else. Foreign files (the masked-training
authors' ``.pth`` releases, the IDF authors' Lightning ``.ckpt`` files, or safetensors under their key
names) load through the architecture's ``checkpoint_filter_fn``, the architecture and its size read
off the tensors. Pickles are only ever opened with ``torch.load(weights_only=True)``; objects of other
libraries in a training checkpoint (its hyper-parameters) are read as inert placeholders and dropped.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from . import zoo
from .errors import MaskdnError, first_line
from .io import atomic_write, check_file
from . import idf
from .denoiser import Denoiser
from .model import MaskedSwinIR, ModelConfig, checkpoint_filter_fn, infer_config

FORMAT = "maskdn-weights/1"
CONFIG_KEY, TRAINING_KEY = "maskdn.config", "maskdn.training"
ARCH_KEY = "maskdn.architecture"
SWINIR = "masked-swinir"
"""The architecture of files without ``maskdn.architecture`` metadata (all written before IDF came)."""
ARCHITECTURES = {SWINIR: (MaskedSwinIR, ModelConfig), idf.ARCHITECTURE: (idf.IDFNet, idf.IDFConfig)}
"""``maskdn.architecture`` name → (model class, config class)."""


def architecture_of(model: Denoiser) -> str:
    """The ``maskdn.architecture`` name of a model instance.

    Args:
        model: A :class:`MaskedSwinIR` or :class:`~maskdn.idf.IDFNet`.

    Returns:
        Its key in :data:`ARCHITECTURES`.

    Raises:
        MaskdnError: Another kind of object.
    """
    for name, (cls, _) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise MaskdnError(f"cannot save a {type(model).__name__}: not a maskdn model ({', '.join(ARCHITECTURES)})")


def save_model(model: Denoiser, path: str | Path, training: dict | None = None) -> Path:
    """Write ``model``'s weights, config and training record as safetensors, atomically.

    The tensors are stored as float32 on the CPU; the safetensors metadata (string to string) holds
    ``format`` (:data:`FORMAT`), ``maskdn.architecture`` (:func:`architecture_of`), ``maskdn.config``
    (the model's config as JSON) and, when given, ``maskdn.training`` (the record as JSON). The file
    gets the mode of any new file (umask applied).

    Args:
        model: The model (either architecture) whose ``state_dict`` and ``config`` are written.
        path: The output file (``.safetensors`` by convention); its folder must exist.
        training: A JSON-serializable training record, or ``None`` for none.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        MaskdnError: ``"<path>: cannot write (...)"`` (:func:`maskdn.io.atomic_write`), or a model
            of neither architecture.
    """
    path = Path(path)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, ARCH_KEY: architecture_of(model), CONFIG_KEY: json.dumps(model.config.to_dict())}
    if training is not None:
        meta[TRAINING_KEY] = json.dumps(training)
    with atomic_write(path) as tmp:
        _save_file(tensors, tmp, meta, path)
    return path


def _save_file(tensors: dict[str, Tensor], tmp: Path, meta: dict, path: Path) -> None:
    """safetensors' ``save_file`` into ``tmp`` (inside :func:`atomic_write`), its failures as one line."""
    try:
        save_file(tensors, str(tmp), metadata=meta)
    except OSError:
        raise  # atomic_write names the file and the reason
    except Exception as e:  # safetensors' own error type, e.g. a full disk
        raise MaskdnError(f"{path}: cannot write ({first_line(e)})") from None
    _permissions_as_umask(tmp)


def _permissions_as_umask(path: Path) -> None:
    """safetensors writes files readable by their owner only (0600); give them the mode of any new file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_metadata(path: str | Path) -> dict:
    """The architecture, config and training record stored in one of our files.

    Args:
        path: A safetensors file written by :func:`save_model` (only its header is read).

    Returns:
        ``{"architecture": str, "config": dict, "training": dict or None}``: ``maskdn.architecture``
        (:data:`SWINIR` when absent) and the JSON of the ``maskdn.config`` and ``maskdn.training``
        safetensors metadata.

    Raises:
        MaskdnError: ``"<path>: not a readable safetensors file (...)"`` or ``"<path>: not a maskdn
            weights file (no maskdn.config metadata)"``.
    """
    meta = _safetensors_metadata(Path(path))
    if CONFIG_KEY not in meta:
        raise MaskdnError(f"{path}: not a maskdn weights file (no {CONFIG_KEY} metadata)")
    return {"architecture": meta.get(ARCH_KEY, SWINIR), "config": json.loads(meta[CONFIG_KEY]),
            "training": json.loads(meta.get(TRAINING_KEY, "null"))}


def describe_zoo() -> list[dict]:
    """What each bundled model is, read from its own metadata (:func:`read_metadata`); ``maskdn models`` prints it.

    Returns:
        One dict per zoo model, sorted by name: ``name``, ``default`` (whether it is
        :data:`maskdn.zoo.DEFAULT_MODEL`), ``architecture`` (``masked-swinir`` or ``idf``), ``preset``
        (``"custom"`` when the record names none), ``parameters`` (the count of the architecture in its
        config), ``attn_mask_ratio`` (the fraction of attention keys masked, 0–1; 0 for IDF),
        ``training`` (the training record, ``{}`` when
        absent) and ``scores`` (``{dataset: {condition: PSNR in dB}}`` recorded by ``maskdn evaluate
        --record``, ``{}`` when absent).

    Raises:
        MaskdnError: A bundled file that is not a readable maskdn weights file.
    """
    rows = []
    for name in zoo.names():
        meta = read_metadata(zoo.zoo_dir() / f"{name}.safetensors")
        training = meta["training"] or {}
        model_cls, config_cls = _architecture(name, meta["architecture"])
        config = config_cls.from_dict(meta["config"])
        rows.append(
            {
                "name": name,
                "default": name == zoo.DEFAULT_MODEL,
                "architecture": meta["architecture"],
                "preset": training.get("preset", "custom"),
                "parameters": sum(p.numel() for p in model_cls(config).parameters()),
                "attn_mask_ratio": getattr(config, "attn_mask_ratio", 0.0),
                "training": training,
                "scores": training.get("scores", {}),
            }
        )
    return rows


def featured_pair(zoo_rows: list[dict] | None = None) -> tuple[str, str] | None:
    """The bundled masked-training model and its unmasked baseline that the README compares.

    Among the zoo's SwinIR models (``architecture`` ``masked-swinir``): a masked one (attention mask on)
    and an unmasked one (no attention mask, no input mask) trained alike, i.e. with the same preset,
    patch size and patches seen (``training.patches_seen``, cool-down included); of such pairs, the one
    trained on the most patches (ties: the later names). So when a longer-trained pair is bundled beside
    an older one, the README's comparisons move to it, and a model without its twin never pairs.

    Args:
        zoo_rows: :func:`describe_zoo`'s rows (None: read them).

    Returns:
        ``(masked, baseline)`` zoo names, or None when no such pair is bundled.
    """
    rows = describe_zoo() if zoo_rows is None else zoo_rows
    kinds: dict[tuple, dict[str, str]] = {}
    for r in sorted((r for r in rows if r["architecture"] == "masked-swinir"), key=lambda r: r["name"]):
        t = r["training"]
        kind = "masked" if r["attn_mask_ratio"] > 0 else None if t.get("input_mask") else "baseline"
        if kind:
            kinds.setdefault((t.get("patches_seen", 0), t.get("preset"), t.get("patch_size")), {})[kind] = r["name"]
    pairs = [(key[0], k["masked"], k["baseline"]) for key, k in kinds.items() if len(k) == 2]
    return max(pairs)[1:] if pairs else None


def update_training_record(path: str | Path, *, dest: str | Path | None = None, **fields) -> dict:
    """Merge ``fields`` into the training record of one of our files (rewritten atomically), or of a copy.

    Args:
        path: A safetensors file written by :func:`save_model`.
        dest: Write the updated file here instead (``path`` is left as it is); None: rewrite ``path``.
        **fields: JSON-serializable values stored under their names in the ``maskdn.training``
            metadata (e.g. ``scores``), replacing values of the same name.

    Returns:
        The updated training record.

    Raises:
        MaskdnError: An unreadable file, one without ``maskdn.config`` metadata (``"<path>: not a
            maskdn weights file (...)"``), or ``"<dest or path>: cannot write (...)"``.
    """
    path = Path(path)
    tensors, meta = _read_tensors(path)
    if CONFIG_KEY not in meta:
        raise MaskdnError(f"{path}: not a maskdn weights file (no {CONFIG_KEY} metadata)")
    record = json.loads(meta.get(TRAINING_KEY, "null")) or {}
    record.update(fields)
    meta[TRAINING_KEY] = json.dumps(record)
    target = path if dest is None else Path(dest)
    with atomic_write(target) as tmp:
        _save_file(tensors, tmp, meta, target)
    return record


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type, OSError or ValueError
        raise MaskdnError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """The safetensors layout: an 8-byte little-endian header length N, then N bytes of JSON object."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _config_from_metadata(path: Path, meta: dict) -> ModelConfig:
    """The :class:`ModelConfig` stored in ``meta``, or one line saying what is wrong with it."""
    try:
        d = json.loads(meta[CONFIG_KEY])
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
        return ModelConfig.from_dict(d)
    except (ValueError, TypeError, AttributeError, MaskdnError) as e:
        raise MaskdnError(f"{path}: broken {CONFIG_KEY} metadata ({first_line(e)})") from None


def _check_finite(path: Path, state: dict[str, Tensor]) -> None:
    for name, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise MaskdnError(f"{path}: tensor {name} holds NaN or inf values; refused (the weights are broken)")


class _Inert:
    """What an object of another library in a checkpoint becomes: nothing of it runs or is kept."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


_PLAIN_TYPES = {f"builtins.{t.__name__}": t for t in (bool, int, float, str, list, tuple, dict, set)}
"""Types a checkpoint's metadata may name as values (OmegaConf records a node's type), allowed as themselves."""


def _placeholders(path: Path) -> list:
    """Allowlist entries for the globals of ``path``'s pickle that torch's ``weights_only`` refuses.

    The plain types of :data:`_PLAIN_TYPES` and ``collections.defaultdict`` as themselves; globals of
    other libraries (e.g. the OmegaConf hyper-parameters of a Lightning checkpoint) as :class:`_Inert`.
    Anything else in ``builtins``, ``collections`` and ``torch`` is left out, so a pickled module,
    optimizer or builtin function is still refused.
    """
    from collections import defaultdict

    out = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
        if name in _PLAIN_TYPES or name == "collections.defaultdict":
            out.append(_PLAIN_TYPES.get(name, defaultdict))
        elif name.split(".")[0] not in ("builtins", "collections", "torch"):
            out.append((_Inert, name))
    return out


def _load_tensors_only(path: Path) -> object:
    """``torch.load(weights_only=True)``; if it refuses a global of another library, once more with
    that library's objects replaced by :class:`_Inert` (tensors are rebuilt as always)."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            refusal = e
            try:
                stand_ins = _placeholders(path)
            except Exception:  # an older torch without the listing: keep the refusal
                stand_ins = []
            if not stand_ins:
                raise MaskdnError(f"{path}: refused: not a plain tensor checkpoint ({first_line(refusal)})") from None
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except MaskdnError:
        raise
    except pickle.UnpicklingError as e:
        raise MaskdnError(f"{path}: refused: not a plain tensor checkpoint ({first_line(e)})") from None
    except Exception as e:  # truncated zip, wrong magic, ...
        raise MaskdnError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None


_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
"""Names under which PyTorch checkpoints are published (the authors' ``.pth``, IDF's ``.ckpt``)."""


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a safetensors file, or of a plain tensor pickle (weights_only)."""
    head = check_file(path, "a weights file")
    if not _looks_like_safetensors(head, path.stat().st_size) and (head[:2] == b"PK" or head[:1] == b"\x80"):
        # a torch zip archive or a legacy pickle (a safetensors header length may also start with 0x80)
        obj = _load_tensors_only(path)
        if not isinstance(obj, dict):
            raise MaskdnError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        return obj, {}
    if path.suffix.lower() in _TORCH_SUFFIXES and not _looks_like_safetensors(head, path.stat().st_size):
        raise MaskdnError(f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle, "
                          "and not safetensors either)")
    meta = _safetensors_metadata(path)
    try:
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises its own error type, OSError or ValueError
        raise MaskdnError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


#: The authors' release names (github.com/haoyuc/MaskedDenoising, ``model_zoo/*.json``) whose masking
#: is unambiguous: ``baseline`` has ``use_mask: false``, ``input_mask_*`` (e.g. ``input_mask_80_90``)
#: ``use_mask: true`` with ``mask_ratio1 = mask_ratio2 = 75``. (stem prefix, attention mask ratio)
AUTHORS_RELEASES: tuple[tuple[str, float], ...] = (("baseline", 0.0), ("input_mask", 0.75))


def guess_attn_mask_ratio(path: str | Path) -> tuple[float, bool]:
    """The attention-mask ratio of a weights file that stores no config, from the authors' file names.

    Args:
        path: The file (only its name is looked at).

    Returns:
        ``(ratio, known)``: for a stem starting with a name of :data:`AUTHORS_RELEASES`
        (case-insensitive) its ratio and True; otherwise the :class:`ModelConfig` default 0.75 (the
        paper's masked model) and False, a guess.
    """
    stem = Path(path).stem.lower()
    for prefix, ratio in AUTHORS_RELEASES:
        if stem.startswith(prefix):
            return ratio, True
    return ModelConfig.attn_mask_ratio, False


def load_model(
    source: str | Path | None = None,
    config: ModelConfig | None = None,
    device: str | torch.device = "cpu",
    *,
    attn_mask_ratio: float | None = None,
) -> MaskedSwinIR:
    """A :class:`MaskedSwinIR` in eval mode from a zoo name, one of our files, or a foreign checkpoint.

    How ``source`` is read: ``None`` is the default zoo model; a string that is a zoo name (``maskdn
    models`` lists them) is that bundled file, even if a file of that name exists in the working
    folder; anything else is a path. A ``.safetensors`` file written by :func:`save_model` carries its
    config in its metadata; other files (the authors' ``.pth`` releases, other safetensors) are read
    with ``torch.load(weights_only=True)`` (tensors only, never an unpickled object) and their keys
    mapped by :func:`~maskdn.model.checkpoint_filter_fn` (the authors' names, ``params``/``params_ema``
    wrappers).

    Args:
        source: Zoo name, path, or None.
        config: The architecture and masking. For foreign files without it, the architecture is read
            off the tensors (:func:`~maskdn.model.infer_config`) and the attention-mask ratio comes
            from the authors' file names (:func:`guess_attn_mask_ratio`: ``baseline*`` 0,
            ``input_mask*`` 0.75); for any other name it is guessed as 0.75 and a ``UserWarning``
            says so (``maskdn`` prints it as one line). For our own files a given ``config``
            overrides the stored one (e.g. to switch masking off).
        device: Where the model is put.
        attn_mask_ratio: Sets the fraction of attention keys masked, in [0, 1) (0: none), over the
            stored, given, named or guessed one; None: keep it. The command line's
            ``--attn-mask-ratio``.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        MaskdnError: One line naming the file: a bare name that is not in the zoo, a missing or
            unreadable file, a file that is neither safetensors nor a tensors-only torch checkpoint,
            an architecture that cannot be inferred, weights that do not fit the config (missing,
            unexpected or mis-shaped keys), or an ``attn_mask_ratio`` outside [0, 1).
    """
    import dataclasses
    import warnings

    path = zoo.resolve(source)
    tensors, meta = _read_tensors(path)
    if _is_idf(path, meta, tensors):
        return _load_idf(path, tensors, meta, config, device)
    state = checkpoint_filter_fn(tensors)
    if config is None:
        if CONFIG_KEY in meta:
            config = _config_from_metadata(path, meta)
        else:
            try:
                config = infer_config(state)
            except MaskdnError as e:
                raise MaskdnError(f"{path}: {e}") from None
            ratio, known = guess_attn_mask_ratio(path)
            config = dataclasses.replace(config, attn_mask_ratio=ratio)
            if not known and attn_mask_ratio is None:
                warnings.warn(f"{path}: stores no config; guessed attention mask ratio {ratio:g} (the paper's "
                              f"masked model); for an unmasked one set it to 0 (--attn-mask-ratio 0)", stacklevel=2)
    if attn_mask_ratio is not None:
        try:
            config = dataclasses.replace(config, attn_mask_ratio=float(attn_mask_ratio))
        except (MaskdnError, TypeError, ValueError) as e:
            raise MaskdnError(f"--attn-mask-ratio {attn_mask_ratio}: {first_line(e)}") from None
    _check_finite(path, state)
    return _fill(path, MaskedSwinIR(config), state).to(device).eval()


def _architecture(path: Path | str, name: str) -> tuple[type, type]:
    """(model class, config class) of a ``maskdn.architecture`` name, or one line naming the file."""
    if name not in ARCHITECTURES:
        raise MaskdnError(f"{path}: unknown architecture {name!r} in {ARCH_KEY} (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def _is_idf(path: Path, meta: dict, tensors: dict) -> bool:
    """Whether a file holds IDF weights: by its metadata, or (foreign files) by its tensors' names."""
    if CONFIG_KEY in meta or ARCH_KEY in meta:
        return _architecture(path, meta.get(ARCH_KEY, SWINIR))[0] is idf.IDFNet
    return idf.looks_like_idf(idf.checkpoint_filter_fn(tensors))


def _load_idf(path: Path, tensors: dict, meta: dict, config: idf.IDFConfig | None, device) -> idf.IDFNet:
    """:func:`load_model` for IDF weights: ours (config in the metadata) or the authors' (inferred)."""
    state = idf.checkpoint_filter_fn(tensors)
    if config is not None and not isinstance(config, idf.IDFConfig):
        raise MaskdnError(f"{path}: holds IDF weights; give an IDFConfig, not a {type(config).__name__}")
    try:
        if config is None:
            config = (idf.IDFConfig.from_dict(json.loads(meta[CONFIG_KEY])) if CONFIG_KEY in meta
                      else idf.infer_config(state))
    except (ValueError, TypeError, AttributeError, MaskdnError) as e:
        raise MaskdnError(f"{path}: broken {CONFIG_KEY} metadata ({first_line(e)})") from None
    _check_finite(path, state)
    return _fill(path, idf.IDFNet(config), state).to(device).eval()


def _fill(path: Path, model: Denoiser, state: dict[str, Tensor]) -> Denoiser:
    """``model`` with ``state`` loaded strictly, or one line naming the missing, extra or mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise MaskdnError(f"{path}: weights do not fit the model config ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model


__all__ = [
    "AUTHORS_RELEASES",
    "describe_zoo",
    "featured_pair",
    "guess_attn_mask_ratio",
    "load_model",
    "read_metadata",
    "save_model",
    "update_training_record",
]
