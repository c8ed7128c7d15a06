"""Bundle the IDF authors' released weights as maskdn zoo entries, with their provenance and licence.

    python tools/import_idf.py IDF_FOLDER [--out src/maskdn/weights]

``IDF_FOLDER`` holds the authors' checkpoints (github.com/dongjinkim9/IDF, ``pretrained_models/``:
``idf_g_15.ckpt``, ``idf_g_15_50.ckpt``, ``idf_gp.ckpt``) or their tensors converted to safetensors
(``idf_g_15.safetensors``, …), and the repository's ``LICENSE``. Each is loaded with
``maskdn.load_model`` (tensors only: nothing of the checkpoint is unpickled but tensors) and written
with ``maskdn.save_model`` as ``idf-g15.safetensors``, ``idf-g15-50.safetensors`` and
``idf-gp.safetensors``: the same tensor values under the network's own key names, the config
(``IDFConfig``) and a record of where the weights come from, what noise they were trained on and
under which licence. The licence is copied beside them as ``IDF-LICENSE.txt`` with ``IDF-NOTICE.txt``
(what was changed, as the Apache License 2.0 asks of redistributions).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from maskdn.weights import load_model, save_model

UPSTREAM = "github.com/dongjinkim9/IDF at commit f42cd80a"
PAPER = ("Kim, Ko, Ali, Kim: IDF: Iterative Dynamic Filtering Networks for Generalizable Image Denoising, "
         "ICCV 2025 (arXiv 2508.19649)")
RECIPE = {"data": "CBSD432", "iterations": 50000, "batch_size": 8, "patch_size": 128,
          "trained_by": "the IDF authors (AdamW 1e-4, L1 loss; their configs/train_lit_denoising.yaml)"}
RELEASES = {  # zoo name → (release stem, training noise as the authors describe it, in maskdn's spelling where one exists)
    "idf-g15": ("idf_g_15", "gaussian:15"),
    "idf-g15-50": ("idf_g_15_50", "gaussian σ uniform in [15, 50]"),
    "idf-gp": ("idf_gp", "gaussian σ in [15, 50] plus poisson λ in [1, 4]"),
}
NOTICE = f"""IDF weights bundled with maskdn

The files idf-g15.safetensors, idf-g15-50.safetensors and idf-gp.safetensors in this folder are the
pretrained IDF models released by Dongjin Kim, Jaekyun Ko, Muhammad Kashif Ali and Tae Hyun Kim with
{PAPER},
at {UPSTREAM} (pretrained_models/idf_g_15.ckpt, idf_g_15_50.ckpt, idf_gp.ckpt),
Copyright 2025 Dongjin Kim, licensed under the Apache License, Version 2.0 (IDF-LICENSE.txt here).

Changes made by maskdn: only the network's tensors were taken from each checkpoint (their values are
unchanged); the key prefix "model." of the authors' training module was removed, and the tensors were
stored in the safetensors format with maskdn's metadata (the network's configuration and this
provenance). maskdn's implementation of the network (maskdn/idf.py) is its own code, written from the
paper and the authors' description.
"""


def find_release(folder: Path, stem: str) -> Path:
    for suffix in (".ckpt", ".safetensors"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    raise SystemExit(f"{folder}: neither {stem}.ckpt nor {stem}.safetensors")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="the authors' checkpoints (.ckpt or .safetensors) and LICENSE")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "maskdn" / "weights")
    a = p.parse_args(argv)
    licence = a.folder / "LICENSE"
    if not licence.exists():
        raise SystemExit(f"{licence}: missing (the weights are redistributed under it)")
    for name, (stem, noise) in RELEASES.items():
        src = find_release(a.folder, stem)
        record = {"preset": "idf", "architecture": "IDF (Kim et al., ICCV 2025)", "noise": noise, **RECIPE,
                  "source": f"{UPSTREAM}, pretrained_models/{stem}.ckpt", "paper": PAPER,
                  "licence": "Apache-2.0 (IDF-LICENSE.txt and IDF-NOTICE.txt beside the weights)"}
        out = save_model(load_model(src), a.out / f"{name}.safetensors", training=record)
        print(f"{src} -> {out}")
    shutil.copyfile(licence, a.out / "IDF-LICENSE.txt")
    (a.out / "IDF-NOTICE.txt").write_text(NOTICE, encoding="utf-8")
    print(f"wrote {a.out / 'IDF-LICENSE.txt'} and {a.out / 'IDF-NOTICE.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
