"""The device path (``batched``, the default off CPU), tested on the CPU, where the same code runs: it
computes the literal path's function with masks on and off, gradients included; its shift masks are
the reference's; it never reads a tensor on the host (it traces in one graph), and its compiled blocks
share their code; the training step can leave its loss on the device."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from maskdn.model import MaskedSwinIR, WindowAttention, preset
from maskdn.train import train_step
from maskdn.windows import border_shift_masks, shift_attention_mask


def _sharp(ratio: float) -> MaskedSwinIR:
    """The tiny model with attention weights and bias ×20, so a wrong bias or shift mask shows."""
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=ratio))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or (".attn." in name and name.endswith("weight")):
                p.mul_(20)
    return model


@pytest.mark.parametrize("ratio", [0.75, 0.0], ids=["masks", "no_masks"])
@pytest.mark.parametrize("size", [(40, 24), (8, 8), (13, 37), (16, 72)], ids=str)  # 8×8: one window, its own corner
def test_batched_forward_matches_reference(ratio, size):
    model = _sharp(ratio).eval()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    outs = {}
    for impl in ("reference", "batched"):
        with torch.no_grad():
            outs[impl] = model.set_attention(impl)(x, generator=torch.Generator().manual_seed(3))
    assert (outs["reference"] - outs["batched"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("ratio", [0.75, 0.0], ids=["masks", "no_masks"])
def test_batched_gradients_match_reference(ratio):
    model = _sharp(ratio).train()
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    results = {}
    for impl in ("reference", "batched"):
        model.set_attention(impl).zero_grad()
        out = model(x, generator=torch.Generator().manual_seed(5))
        out.square().mean().backward()
        results[impl] = out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}
    assert (results["reference"][0] - results["batched"][0]).abs().max().item() <= 1e-4
    for k, g in results["reference"][1].items():
        assert g.abs().max() > 0, k  # every parameter gets a gradient, so the comparison means something
        assert (results["batched"][1][k] - g).abs().max().item() <= 1e-4 * max(1.0, g.abs().max().item()), k


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (8, 24), (32, 40)], ids=str)
def test_border_masks_are_the_shift_mask(size):
    """The three masks, placed on the last window row, column and corner, give the reference's shift mask."""
    H, W = size
    masks = border_shift_masks(8, 4)
    grid = torch.zeros(H // 8, W // 8, 64, 64)
    grid[-1, :-1] += masks[0]
    grid[:-1, -1] += masks[1]
    grid[-1, -1] += masks[2]
    assert torch.equal(grid.view(-1, 64, 64), shift_attention_mask(H, W, 8, 4))


def test_default_path_off_cpu_is_batched(monkeypatch):
    """``fast`` (the default) takes the batched path on any device but the CPU (here: the meta device)."""
    calls = []
    real = WindowAttention.batched
    monkeypatch.setattr(WindowAttention, "batched", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    model = MaskedSwinIR(preset("tiny"))
    model(torch.rand(1, 3, 16, 16))
    assert calls == []  # CPU: the fast path
    out = model.to("meta")(torch.empty(1, 3, 16, 16, device="meta"))
    assert out.shape == (1, 3, 16, 16) and len(calls) == 4


def test_block_traces_in_one_graph_without_host_reads():
    """``fullgraph=True`` fails on any graph break: a tensor read on the host (``.item()``, ``int(t)``), a
    shape that depends on data, a tensor made from a Python list. The shifted block with a token mask,
    in training mode, compiles whole."""
    torch._dynamo.reset()
    model = MaskedSwinIR(preset("tiny")).set_attention("batched").train()
    block = model.layers[0].residual_group.blocks[1]
    assert block.shift_size == 4
    x = torch.rand(2, 32 * 32, 24)
    keep = (torch.rand(2 * 16, 64, 1) > 0.75).float()
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x, (32, 32), keep), block(x, (32, 32), keep))


def test_compiled_blocks_share_one_graph_per_shift():
    """Regional compilation: the four blocks of the tiny model compile into two graphs (shift 0 and 4),
    the parameter names stay, and the result is the uncompiled one's."""
    torch._dynamo.reset()
    counters.clear()
    plain = MaskedSwinIR(preset("tiny")).set_attention("batched").train()
    model = copy.deepcopy(plain).compile_blocks(backend="eager")
    x = torch.rand(2, 3, 16, 16)
    out = model(x, generator=torch.Generator().manual_seed(1))
    out.mean().backward()
    assert counters["stats"]["unique_graphs"] == 2
    assert list(model.state_dict()) == list(plain.state_dict())
    assert torch.equal(out, plain(x, generator=torch.Generator().manual_seed(1)))
    torch._dynamo.reset()


def _symbolic_inputs(gm: torch.fx.GraphModule) -> list[str]:
    """The graph's inputs that are symbolic sizes, or tensors with a symbolic size."""
    names = []
    for node in gm.graph.nodes:
        value = node.meta.get("example_value")
        if node.op == "placeholder" and (isinstance(value, torch.SymInt) or (
                isinstance(value, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in value.shape))):
            names.append(node.name)
    return names


def test_compiled_blocks_stay_static_across_shapes():
    """A forward at one size, then training at another (as a validation pass between training steps,
    or the GPU measurement's forward before its training step): every graph is compiled for fixed
    shapes, none with symbolic sizes (PyTorch's automatic dynamic shapes would make the second shape's
    graphs symbolic, and training would keep running them)."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(_symbolic_inputs(gm))
        return gm.forward

    model = MaskedSwinIR(preset("tiny")).set_attention("batched").compile_blocks(backend=backend).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 40, 48))
    model.train()
    model(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(1)).mean().backward()
    assert len(graphs) == 4  # two shifts × two (shape, mode) variants
    assert graphs == [[]] * 4
    torch._dynamo.reset()


def test_train_step_can_leave_the_loss_on_the_device():
    """``sync=False``: the same step, the loss returned as an unread 0-dim tensor of the same value."""
    losses, weights = {}, {}
    for sync in (True, False):
        torch.manual_seed(0)
        model = MaskedSwinIR(preset("tiny")).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(3)
        clean = torch.rand(2, 3, 16, 16, generator=g)
        noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
        losses[sync] = train_step(model, opt, noisy, clean, generator=torch.Generator().manual_seed(4),
                                  grad_clip=1.0, sync=sync)
        weights[sync] = model.state_dict()
    assert isinstance(losses[True], float)
    assert isinstance(losses[False], torch.Tensor) and losses[False].ndim == 0
    assert losses[False].item() == losses[True]
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])


def test_unread_nan_loss_is_returned_not_raised():
    """Unsynchronised, a NaN loss is the caller's to find (the trainer reads it at its next log row)."""
    torch.manual_seed(0)
    model = MaskedSwinIR(preset("tiny")).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    noisy = torch.full((1, 3, 16, 16), float("nan"))
    loss = train_step(model, opt, noisy, torch.zeros(1, 3, 16, 16), sync=False)
    assert torch.isnan(loss)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_step(model, opt, noisy, torch.zeros(1, 3, 16, 16), sync=True)
