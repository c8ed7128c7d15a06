"""The one way maskdn derives seeds: a stable integer from a tuple of keys.

Every random draw that must be reproducible across runs, processes and machines (a test image's
noise, a training sample, a training step's attention masks, the token sample of the feature
analysis) seeds its own ``torch.Generator`` from :func:`derive_seed` of what identifies it, instead
of advancing a shared RNG. So no result depends on what was drawn before it, on the number of worker
processes, or on where a run was resumed.
"""

from __future__ import annotations

import zlib

_MULTIPLIER = 1_000_003  # a prime: distinct base seeds give seeds that differ beyond the hash's 32 bits


def derive_seed(base: int, *keys: int | str) -> int:
    """A 63-bit seed from a base seed and keys (ints or strings), stable across Python versions and machines.

    ``(base · 1,000,003 + CRC-32 of "key1|key2|…") mod 2⁶³``. CRC-32 (zlib) rather than ``hash()``,
    which Python salts per process. Examples: ``derive_seed(0, "kodim01", "poisson:2")`` is the noise of
    kodim01 under Poisson α=2 in every benchmark run (:func:`maskdn.noise.noise_seed`);
    ``derive_seed(seed, iteration, j)`` is training sample ``j`` of an iteration.

    Args:
        base: the user's seed (any int; negative values are reduced mod 2⁶³).
        keys: what identifies the draw, in a fixed order; ``str(key)`` is hashed.
    Returns:
        An int in [0, 2⁶³), valid for ``torch.Generator.manual_seed``.
    """
    text = "|".join(str(k) for k in keys)
    return (int(base) * _MULTIPLIER + zlib.crc32(text.encode())) % (2**63)


__all__ = ["derive_seed"]
