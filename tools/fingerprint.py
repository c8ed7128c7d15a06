"""Outputs of a 768×512 forward and one training step of every preset, to check that a refactoring
changes nothing: run it before and after, then compare the two files bit for bit.

    python tools/fingerprint.py before.pt            # at the old commit
    python tools/fingerprint.py after.pt             # at the new one
    python tools/fingerprint.py --compare before.pt after.pt

One thread (the reduction order of a matrix product depends on the thread count), seeded weights and
inputs, the attention mask drawn from a seeded generator, the default (fast) attention path; each
preset with the attention mask at 0.75 and at 0. Uses only the public API (maskdn.model,
maskdn.train.train_step), which a layout change must keep.
"""

from __future__ import annotations

import argparse
import sys

import torch


def fingerprint(presets: list[str]) -> dict[str, torch.Tensor]:
    from maskdn.model import MaskedSwinIR, preset
    from maskdn.train import train_step

    torch.set_num_threads(1)
    out: dict[str, torch.Tensor] = {}
    for name in presets:
        for ratio in (0.75, 0.0):
            key = f"{name}/attn{ratio}"
            torch.manual_seed(0)
            model = MaskedSwinIR(preset(name, attn_mask_ratio=ratio)).eval()
            image = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                out[f"{key}/forward"] = model(image, generator=torch.Generator().manual_seed(2))
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(3)
            clean = torch.rand(4, 3, 64, 64, generator=g)
            noisy = (clean + 0.06 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
            loss = train_step(model, opt, noisy, clean, generator=torch.Generator().manual_seed(4), grad_clip=1.0)
            out[f"{key}/loss"] = torch.tensor(loss, dtype=torch.float64)
            for k, v in model.state_dict().items():
                out[f"{key}/step/{k}"] = v.clone()
            print(f"{key}: done", file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="output file, or two files with --compare")
    p.add_argument("--compare", action="store_true", help="compare two fingerprint files bit for bit")
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"],
                   help="presets to run (default: all three; paper takes several minutes on one thread)")
    a = p.parse_args()
    if len(a.files) != (2 if a.compare else 1):
        p.error("give one output file, or two files with --compare")
    if not a.compare:
        torch.save(fingerprint(a.presets), a.files[0])
        return 0
    x, y = (torch.load(f, weights_only=True) for f in a.files)
    differ = sorted(k for k in x.keys() | y.keys() if k not in x or k not in y or not torch.equal(x[k], y[k]))
    print(f"{len(x)} tensors, {len(differ)} differ" + "".join(f"\n  {k}" for k in differ[:20]))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
