"""The model: conformance to the authors' code, shapes, attention paths and token masking."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from maskdn.errors import MaskdnError
from maskdn.model import (
    ATTENTION_IMPLS,
    MaskedSwinIR,
    ModelConfig,
    checkpoint_filter_fn,
    infer_config,
    preset,
)


def _conformance(name: str):
    root = shared_path("conformance")
    cfg = json.loads((root / "configs.json").read_text())[name]
    weights = load_file(str(root / f"{name}_weights.safetensors"))
    io = load_file(str(root / f"{name}_io.safetensors"))
    return cfg, weights, io


@pytest.mark.parametrize("name", ["tiny", "paper"])
@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
def test_conformance_with_authors_outputs(name, impl):
    cfg, weights, io = _conformance(name)
    c = cfg["config"]
    config = ModelConfig(
        in_chans=c["in_chans"], embed_dim=c["embed_dim"], depths=c["depths"], num_heads=c["num_heads"],
        window_size=c["window_size"], mlp_ratio=c["mlp_ratio"], resi_connection=c["resi_connection"],
        img_range=c["img_range"], attn_mask_ratio=0.0,
    )
    model = MaskedSwinIR(config).eval()
    model.load_state_dict(checkpoint_filter_fn(weights), strict=True)
    model.set_attention(impl)
    assert sum(p.numel() for p in model.parameters()) == cfg["n_params"]
    inputs = [k for k in io if k.startswith("input.")]
    assert len(inputs) == 2
    for key in inputs:
        with torch.no_grad():
            out = model(io[key])
        ref = io["output." + key.removeprefix("input.")]
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-4, key


def test_tiny_file_carries_derived_buffers_and_config_is_inferred():
    cfg, weights, _ = _conformance("tiny")
    assert any(k.endswith("attn_mask") for k in weights)
    assert any(k.endswith("relative_position_index") for k in weights)
    filtered = checkpoint_filter_fn(weights)
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in filtered)
    inferred = infer_config(filtered, attn_mask_ratio=0.0)
    assert inferred.embed_dim == cfg["config"]["embed_dim"]
    assert list(inferred.depths) == cfg["config"]["depths"]
    assert list(inferred.num_heads) == cfg["config"]["num_heads"]
    assert inferred.resi_connection == "3conv" and inferred.window_size == 8 and inferred.mlp_ratio == 2


def test_paper_preset_parameter_count():
    assert sum(p.numel() for p in MaskedSwinIR(preset("paper")).parameters()) == 824_118
    assert preset("paper").attn_mask_ratio == 0.75


def test_preset_overrides_and_unknown_preset():
    assert preset("tiny", attn_mask_ratio=0.0).attn_mask_ratio == 0.0
    with pytest.raises(MaskdnError, match="unknown preset 'huge'.*paper"):
        preset("huge")


def test_config_validation_and_round_trip():
    c = preset("small")
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(MaskdnError, match="divisible"):
        ModelConfig(embed_dim=30, num_heads=(4, 4, 4, 4))
    with pytest.raises(MaskdnError, match="attn_mask_ratio"):
        ModelConfig(attn_mask_ratio=1.0)
    with pytest.raises(MaskdnError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"embed_dimm": 3})


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (5, 3), (1, 1), (8, 17)])
def test_any_size_gives_same_shape(tiny_model, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert tiny_model(x).shape == x.shape


def test_rejects_wrong_channel_count(tiny_model):
    with pytest.raises(MaskdnError, match=r"expected input \[B, 3, H, W\]"):
        tiny_model(torch.rand(1, 4, 16, 16))


@pytest.fixture
def sharp_masked_model(tiny_masked_model) -> MaskedSwinIR:
    """The tiny masked model with attention weights and bias ×20: at init the attention branch barely
    moves the output, so a wrong bias or shift mask would hide under any tolerance (it did: 9e-6)."""
    model = copy.deepcopy(tiny_masked_model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or (".attn." in name and name.endswith("weight")):
                p.mul_(20)
    return model


@pytest.mark.parametrize("impl", ["fast", "sdpa"])
@pytest.mark.parametrize("size", [(40, 24), (64, 64), (13, 37), (96, 88)], ids=str)  # 96×88: window groups cut the border
def test_attention_paths_match_reference_with_masks_on(sharp_masked_model, impl, size, attention_core):
    """Same generator, same token masks: every path computes the reference's function (odd sizes pad)."""
    x = torch.rand(2, 3, *size)
    outs = {}
    for name in ("reference", impl):
        sharp_masked_model.set_attention(name)
        with torch.no_grad():
            outs[name] = sharp_masked_model(x, generator=torch.Generator().manual_seed(3))
    assert (outs["reference"] - outs[impl]).abs().max().item() <= 1e-4


def test_fast_path_gradients_match_reference(sharp_masked_model, attention_core):
    """Training runs the autograd branch of the fast path: loss and every gradient agree."""
    x = torch.rand(2, 3, 32, 32)
    grads = {}
    for name in ("reference", "fast"):
        sharp_masked_model.set_attention(name).zero_grad()
        out = sharp_masked_model.train()(x, generator=torch.Generator().manual_seed(5))
        out.square().mean().backward()
        grads[name] = {k: p.grad.clone() for k, p in sharp_masked_model.named_parameters()}
    for k, g in grads["reference"].items():
        assert torch.allclose(grads["fast"][k], g, atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("size", [(32, 32), (40, 48)], ids=str)
def test_unmasked_training_matches_reference(sharp_masked_model, attention_core, size):
    """The unmasked baseline trains through the kernel with every token kept (the PyTorch path without
    it): output and every gradient agree with the reference, shifted windows' borders included."""
    model = MaskedSwinIR(dataclasses.replace(sharp_masked_model.config, attn_mask_ratio=0.0))
    model.load_state_dict(sharp_masked_model.state_dict())
    x = torch.rand(2, 3, *size)
    results = {}
    for name in ("reference", "fast"):
        model.set_attention(name).train().zero_grad()
        out = model(x)
        out.square().mean().backward()
        results[name] = out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}
    assert (results["reference"][0] - results["fast"][0]).abs().max().item() <= 1e-4
    for k, g in results["reference"][1].items():
        assert torch.allclose(results["fast"][1][k], g, atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("ratio", [0.05, 0.5, 0.97])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_kept_keys_match_reference_at_any_mask_ratio(sharp_masked_model, ratio, grad, attention_core):
    """Kept-keys attention at the extremes: windows with every token kept (no folded key), with none
    kept (only the folded key), and shifted-window regions without any masked key."""
    model = MaskedSwinIR(dataclasses.replace(sharp_masked_model.config, attn_mask_ratio=ratio))
    model.load_state_dict(sharp_masked_model.state_dict())
    x = torch.rand(2, 3, 40, 48)
    results = {}
    for name in ("reference", "fast"):
        model.set_attention(name).zero_grad()
        with torch.set_grad_enabled(grad):
            out = model.train(grad)(x, generator=torch.Generator().manual_seed(7))
        if grad:
            out.square().mean().backward()
        results[name] = out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert (results["reference"][0] - results["fast"][0]).abs().max().item() <= 1e-4
    for k, g in results["reference"][1].items():
        assert torch.isfinite(results["fast"][1][k]).all(), k
        assert torch.allclose(results["fast"][1][k], g, atol=1e-5, rtol=1e-4), k


def test_kept_keys_train_under_bf16_autocast(tiny_masked_model, attention_core):
    """The hand-written backward under autocast: every bf16 gradient is as close to the float32 one as
    the reference path's bf16 gradient is (the position-bias tables differ by ~10-15% in both)."""
    x = torch.rand(2, 3, 32, 32)

    def grads(impl: str, bf16: bool) -> dict[str, torch.Tensor]:
        tiny_masked_model.set_attention(impl).train().zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = tiny_masked_model(x, generator=torch.Generator().manual_seed(5))
        (out.float() - x).abs().mean().backward()
        return {k: p.grad.clone() for k, p in tiny_masked_model.named_parameters()}

    exact, reference, fast = grads("reference", False), grads("reference", True), grads("fast", True)
    for k, g in exact.items():
        assert fast[k].dtype == torch.float32
        assert (fast[k] - g).norm() <= 1.5 * (reference[k] - g).norm() + 0.01 * g.norm(), k


def test_window_with_every_token_kept_has_no_folded_key(attention_core):
    """With nothing masked there is no masked key to fold: its logit must be −inf, not log(tiny), which
    wins when every kept key scores far below the bias key (q·(k − b_k) ≪ 0), as built here."""
    from maskdn.fastpath import kept_keys, key_tables
    from maskdn.model import WindowAttention
    from maskdn.windows import window_layout

    attn = WindowAttention(16, 8, 2)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.weight[16:32] = -10 / 16  # every key ≈ −10·(1, …, 1) for tokens ≈ (1, …, 1)
        attn.qkv.weight[32:] = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
        attn.qkv.bias.zero_()
        attn.qkv.bias[:16] = 10.0  # every query = 10·(1, …, 1)
        attn.qkv.bias[32:] = 5.0  # the masked value, which must get no weight
    x = 1 + 0.01 * torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(3, 64, dtype=torch.bool)
    layout = window_layout(24, 8, 8, 0, x.device)  # three windows, no shift
    with torch.no_grad():
        expected = attn.reference(x, None, keep.unsqueeze(-1).float())
        got = kept_keys(attn, x.view(-1, 16), torch.arange(3 * 64).view(3, 64), keep, layout.kind,
                        key_tables(attn, layout.kind_mask))
    assert (got - expected).abs().max().item() <= 1e-4


def test_unknown_attention_path_is_an_error(tiny_model):
    with pytest.raises(MaskdnError, match="unknown attention path 'flash'.*reference"):
        tiny_model.set_attention("flash")


def test_shifted_window_layout_gathers_like_roll_and_partition():
    from maskdn.windows import shift_attention_mask, window_layout, window_partition

    H, W, ws, shift = 24, 16, 8, 4
    x = torch.rand(2, H, W, 5)
    layout = window_layout(H, W, ws, shift, torch.device("cpu"))
    rolled = window_partition(torch.roll(x, (-shift, -shift), (1, 2)), ws)
    gathered = x.view(2, H * W, 5).index_select(1, layout.order).view(-1, ws * ws, 5)
    assert torch.equal(gathered, rolled)
    assert torch.equal(gathered.view(2, H * W, 5).index_select(1, layout.inverse), x.view(2, H * W, 5))
    full = shift_attention_mask(H, W, ws, shift)
    kept = layout.border_kind[layout.kind]
    assert torch.equal(full[kept], layout.kind_mask[layout.kind[kept]]) and not full[~kept].any()
    assert kept.sum().item() == (H // ws) + (W // ws) - 1  # last window row and column
    assert torch.equal(layout.kind_mask[layout.kind], full) and len(layout.kind_mask) == 4  # interior, right, bottom, corner


def test_tokens_and_images_convert_without_copies():
    """The convolutions read the token stream through a channels-last view: no copy either way, and a
    conv on the view equals the conv on the plain NCHW image."""
    from maskdn.windows import image_to_tokens, tokens_to_image

    tokens = torch.rand(2, 6 * 10, 4)
    image = tokens_to_image(tokens, (6, 10))
    assert image.shape == (2, 4, 6, 10) and image.data_ptr() == tokens.data_ptr()
    assert image.is_contiguous(memory_format=torch.channels_last)
    plain = tokens.transpose(1, 2).reshape(2, 4, 6, 10)  # the layout the authors' code builds
    assert torch.equal(image, plain)
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    out = conv(image)
    torch.testing.assert_close(out, conv(plain.contiguous()), rtol=1e-5, atol=1e-6)
    back = image_to_tokens(out)
    assert back.shape == (2, 60, 3) and back.data_ptr() == out.data_ptr()
    assert torch.equal(image_to_tokens(image), tokens)


def test_masked_eval_is_stochastic_but_seeded(tiny_masked_model):
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = tiny_masked_model(x, generator=torch.Generator().manual_seed(1))
        b = tiny_masked_model(x, generator=torch.Generator().manual_seed(1))
        c = tiny_masked_model(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_attn_mask_at_eval_switch():
    torch.manual_seed(0)
    m = MaskedSwinIR(preset("tiny", attn_mask_at_eval=False)).eval()
    assert not m.masks_attention
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m(x, generator=torch.Generator().manual_seed(1)), m(x, generator=torch.Generator().manual_seed(2)))
    assert m.train().masks_attention


def test_token_masking_zeroes_tokens_before_qkv(tiny_masked_model):
    """Reference path: the qkv projection's input has about 75% all-zero tokens (the fast path computes
    the same function without projecting them; the equivalence tests hold it to that)."""
    attn = tiny_masked_model.layers[0].residual_group.blocks[0].attn
    seen = {}

    def hook(module, inputs, output):
        seen["x"] = inputs[0]

    handle = attn.qkv.register_forward_hook(hook)
    x = torch.rand(1, 3, 32, 32)  # 1024 tokens
    with torch.no_grad():
        tiny_masked_model.set_attention("reference")(x, generator=torch.Generator().manual_seed(0))
    handle.remove()
    zero_tokens = (seen["x"].abs().sum(-1) == 0).float().mean().item()
    assert 0.68 < zero_tokens < 0.82  # 75% of 1024 tokens, Bernoulli


def test_forward_intermediates_names(tiny_model):
    x = torch.rand(1, 3, 20, 20)
    feats = tiny_model.forward_intermediates(x)
    assert list(feats) == [*tiny_model.feature_names(), "output"]
    assert feats["group0"].shape == (1, 24, 20, 20)
    with torch.no_grad():
        assert torch.allclose(feats["output"], tiny_model(x))


@pytest.mark.parametrize("impl", ["fast"])
def test_inference_window_chunks_change_nothing(sharp_masked_model, monkeypatch, impl):
    """Without autograd, blocks run in groups of windows; groups must not cross images or masks."""
    from maskdn.fastpath import block as fast_block

    sharp_masked_model.set_attention(impl)
    x = torch.rand(2, 3, 40, 24)  # 15 windows per image: chunks of 4 straddle nothing they should not
    with torch.no_grad():
        whole = sharp_masked_model(x, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(fast_block, "WINDOW_GROUP", 4)
        chunked = sharp_masked_model(x, generator=torch.Generator().manual_seed(0))
    assert (whole - chunked).abs().max().item() <= 1e-6


def test_window_layout_made_in_inference_mode_serves_training():
    """The layout cache is process-wide: a layout first built under inference_mode must not break autograd."""
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.0))
    x = torch.rand(1, 3, 48, 40)  # a size no other test uses, so the cache is cold here
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).mean().backward()
    assert model.conv_first.weight.grad is not None
