"""The bundled model zoo: weights shipped inside the package, found by name.

Each ``weights/<name>.safetensors`` is one zoo entry; its name is the file stem. This module only maps
names to files; what a model is, how it was trained and what it scored live in the file's metadata
(written by the trainer and the evaluation), read by :func:`maskdn.weights.describe_zoo`, so the
listing can never disagree with the weights. Weights published elsewhere are named
``hf://owner/repo/file.safetensors`` and fetched through ``huggingface_hub``'s cache (the ``hub`` extra).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import MaskdnError, first_line

DEFAULT_MODEL = "idf-g15"
"""The model used when none is named: see ``maskdn models`` and the README for what it is."""


def zoo_dir() -> Path:
    """The folder of the bundled weights, ``maskdn/weights`` inside the installed package.

    Returns:
        Its path (via ``importlib.resources``; it may not exist in a build without weights).
    """
    return Path(str(files("maskdn") / "weights"))


def names() -> list[str]:
    """Names of the bundled models, sorted.

    Returns:
        The stems of ``zoo_dir()/*.safetensors``, hidden files (a write's temporary ``.NAME.*.tmp``) left
        out; empty when the folder is missing.
    """
    d = zoo_dir()
    return sorted(p.stem for p in d.glob("*.safetensors") if not p.name.startswith(".")) if d.is_dir() else []


def names_default_first() -> list[str]:
    """Names of the bundled models, :data:`DEFAULT_MODEL` first, then the others sorted (the order the
    demo and the web app offer them in).

    Returns:
        The names of :func:`names`, reordered; empty when none is bundled.
    """
    return sorted(names(), key=lambda n: (n != DEFAULT_MODEL, n))


def resolve(source: str | Path | None) -> Path:
    """A zoo name (or None for the default) → its bundled file; ``hf://`` → the Hub's cached file; else a path.

    Args:
        source: A zoo name, a Hugging Face Hub reference ``hf://owner/repo/file.safetensors`` (see
            :func:`resolve_hub`), a path to a weights file, or None for :data:`DEFAULT_MODEL`.

    Returns:
        The bundled file of a zoo name, the local (cached) file of a Hub reference, else
        ``Path(source)`` (not checked to exist, unless it looks like a bare name).

    Raises:
        MaskdnError: ``source`` is neither a zoo name nor an existing file and has no ``/`` or ``.``
            (so it was meant as a zoo name); the message lists the zoo. A Hub reference that cannot
            be resolved (see :func:`resolve_hub`).
    """
    if source is None:
        source = DEFAULT_MODEL
    if isinstance(source, str) and source.startswith(HUB_PREFIX):
        return resolve_hub(source)
    if isinstance(source, str) and source in names():
        return zoo_dir() / f"{source}.safetensors"
    path = Path(source)
    if not path.exists() and isinstance(source, str) and "/" not in source and "." not in source:
        listed = ", ".join(names()) or "none bundled"
        raise MaskdnError(f"{source}: no such zoo model or file (zoo: {listed})")
    return path


HUB_PREFIX = "hf://"
"""How a weights source names a file on the Hugging Face Hub: ``hf://owner/repo[@revision]/path``."""


def parse_hub_reference(ref: str) -> tuple[str, str, str | None]:
    """Split ``hf://owner/repo[@revision]/path/in/repo`` into ``(repo_id, filename, revision)``.

    Args:
        ref: The reference; ``revision`` (a branch, tag or commit) is optional (None: ``main``).

    Returns:
        ``("owner/repo", "path/in/repo", revision or None)``.

    Raises:
        MaskdnError: ``"<ref>: expected hf://owner/repo/file.safetensors (...)"`` when the owner, the
            repository or the file part is missing.
    """
    parts = ref[len(HUB_PREFIX):].split("/")
    if len(parts) < 3 or not all(parts):
        raise MaskdnError(f"{ref}: expected {HUB_PREFIX}owner/repo/file.safetensors "
                          f"(optionally owner/repo@revision/...)")
    repo, _, revision = parts[1].partition("@")
    if not repo or (_ and not revision):
        raise MaskdnError(f"{ref}: empty repository name or revision")
    return f"{parts[0]}/{repo}", "/".join(parts[2:]), revision or None


def resolve_hub(ref: str) -> Path:
    """The local file of a Hub reference, through ``huggingface_hub``'s cache (downloaded on first use).

    ``huggingface_hub.hf_hub_download`` does the work, so its settings apply: the cache folder
    (``HF_HUB_CACHE`` / ``HF_HOME``, default ``~/.cache/huggingface/hub``), ``HF_HUB_OFFLINE=1`` (only
    the cache is read), ``HF_TOKEN`` for private repositories. Without a network the cached copy is
    used. The file is then read like any weights file (safetensors, never an unpickled object).

    Args:
        ref: ``hf://owner/repo[@revision]/path/in/repo`` (see :func:`parse_hub_reference`).

    Returns:
        The path of the file inside the cache.

    Raises:
        MaskdnError: One line naming ``ref``: a malformed reference, ``huggingface_hub`` not installed
            (``pip install 'maskdn[hub]'``), or a file that is neither cached nor downloadable (missing
            repository, revision or file, no network and no cached copy).
    """
    repo_id, filename, revision = parse_hub_reference(ref)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise MaskdnError(f"{ref}: Hub references need the huggingface_hub package: "
                          "pip install 'maskdn[hub]'") from None
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as e:  # its errors: not found, gated, offline and not cached, invalid repo id
        raise MaskdnError(f"{ref}: cannot get the file from the Hugging Face Hub "
                          f"({type(e).__name__}: {first_line(e)})") from None
