"""Process-wide runtime settings: the allocator switch is applied once, and can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from maskdn.fastpath.runtime import keep_freed_memory as k; a = k(); b = k(); print(a, b)"


def _run(env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop("MASKDN_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["MASKDN_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_applies_once_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run(None) == ["True", "True"]


def test_keep_freed_memory_can_be_turned_off():
    assert _run("0") == ["False", "False"]
