"""The model contract, checked for every registered model and variant (timm's test_models idea)."""
import pytest
import torch
from conftest import fitted_pooled

from arcmil.errors import ConfigError
from arcmil.models import build_model, make_config, model_names
from arcmil.models.layers import PositionalEncoding, TopKPooler, sinusoidal_table, window_positions
from arcmil.models.registry import fitted_by_estimator

ALL = model_names()
TRANSFORMERS = [n for n in ALL if n.startswith("trans")]
TRAINED_BY_GRADIENT = [n for n in ALL if not fitted_by_estimator(n)]
D = 32


def small(name, **overrides):
    if fitted_by_estimator(name):  # a classical model: fitted, not initialised
        return fitted_pooled(name, D, **overrides)
    cfg = {"input_dim": D}
    if name in TRANSFORMERS:
        cfg.update(d_model=16, nhead=2, dim_feedforward=32, pooler_hidden=8)
    else:
        cfg.update(hidden_dim=16)
    torch.manual_seed(0)
    return build_model(name, **{**cfg, **overrides}).eval()


def padded_batch(lengths, n_max=None):
    torch.manual_seed(1)
    n_max = n_max or max(lengths)
    x = torch.randn(len(lengths), n_max, D)
    mask = torch.arange(n_max)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


def test_registry_has_models_and_variants():
    assert {"attention_mil", "attention_mil_gated", "transformer_mil", "transformer_mil_topk", "transmil",
            "transmil_dual", "instance_max"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_weights_sum_to_one_over_real_windows(name):
    x, mask = padded_batch([7, 3, 1, 5])
    logits, weights = small(name)(x, mask)
    assert logits.shape == (4,) and weights.shape == (4, 7)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    assert (weights[~mask] == 0).all(), "padding must get exactly zero weight"
    assert (weights >= 0).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_padding_changes_nothing(name):
    model = small(name)
    x, mask = padded_batch([5, 9])
    logits, weights = model(x, mask)
    alone_logits, alone_weights = model(x[:1, :5])  # the first bag without padding, no mask
    torch.testing.assert_close(logits[:1], alone_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[:1, :5], alone_weights, atol=1e-5, rtol=1e-5)
    for filler in (1e3, float("nan"), float("inf")):  # whatever sits in padding must not leak into real outputs
        garbage = x.clone()
        garbage[~mask] = filler
        garbage_logits, garbage_weights = model(garbage, mask)
        torch.testing.assert_close(garbage_logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(garbage_weights, weights, atol=1e-5, rtol=1e-5)


def placed(bags, offsets, width):
    """The bags (n_i, D) placed at ``offsets`` in a (B, width, D) batch whose padding holds noise."""
    x, mask = torch.randn(len(bags), width, D) * 3, torch.zeros(len(bags), width, dtype=torch.bool)
    for i, (bag, offset) in enumerate(zip(bags, offsets)):
        x[i, offset:offset + len(bag)] = bag
        mask[i, offset:offset + len(bag)] = True
    return x, mask


@pytest.mark.parametrize("name,overrides", [(n, {}) for n in ALL] + [(n, {"pos_enc": "learned"}) for n in TRANSFORMERS]
                         + [(n, {"pos_scale_by": "content"}) for n in ("transformer_mil", "transmil")])
def test_padding_side_changes_nothing(name, overrides):
    """The same bags padded on the right, on the left and on both sides, beside batch-mates of other
    lengths, get the same logits and window weights (positions count from a bag's first real window;
    Nystrom's convolution sees only real neighbours; 4 landmarks put the longer bags on its approximate path)."""
    if "nystrom" in name:
        overrides = {**overrides, "num_landmarks": 4}
    model = small(name, **overrides)
    torch.manual_seed(2)
    lengths, width = [6, 3, 9], 13
    bags = [torch.randn(n, D) for n in lengths]
    layouts = {"right": [0] * 3, "left": [width - n for n in lengths], "both": [(width - n) // 2 for n in lengths],
               "ragged": [1, 7, 4]}
    outputs = {}
    for layout, offsets in layouts.items():
        logits, weights = model(*placed(bags, offsets, width))
        outputs[layout] = logits, [weights[i, o:o + n] for i, (o, n) in enumerate(zip(offsets, lengths))]
    right_logits, right_weights = outputs.pop("right")
    for layout, (logits, weights) in outputs.items():
        torch.testing.assert_close(logits, right_logits, atol=1e-5, rtol=1e-5, msg=lambda m: f"{layout}: {m}")
        for w, w_right in zip(weights, right_weights):
            torch.testing.assert_close(w, w_right, atol=1e-5, rtol=1e-5, msg=lambda m: f"{layout}: {m}")


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_keeps_logits_and_weights_in_float32(name):
    """Heads and poolers compute in float32 under autocast: logits are not bf16-rounded."""
    model = small(name)
    x, mask = padded_batch([7, 3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, weights = model(x, mask)
    assert logits.dtype == torch.float32 and weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(logits, model(x, mask)[0], atol=0.1, rtol=0.05)  # bf16 encoder, same model


def test_topk_pooler_takes_float32_windows_under_autocast():
    """As on CUDA, where LayerNorm returns float32 under autocast while Linear returns bf16."""
    pooler = TopKPooler(16, k=3)
    h, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, weights = pooler(h, mask)
    torch.testing.assert_close(logits, pooler(h, mask)[0])
    assert weights.dtype == torch.float32 and torch.equal((weights > 0).sum(dim=1), torch.tensor([3, 3]))


@pytest.mark.parametrize("name", TRAINED_BY_GRADIENT)
def test_every_parameter_gets_a_finite_gradient(name):
    model = small(name, dropout_p=0.0).train()
    x, mask = padded_batch([6, 4, 2])
    logits, _ = model(x, mask)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        if pname.endswith("pooler.w.bias"):  # softmax is shift-invariant: this gradient is 0 analytically
            continue
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", TRANSFORMERS)
@pytest.mark.parametrize("pos_enc", ["sin", "none"])
def test_bags_longer_than_128_windows(name, pos_enc):
    x, mask = padded_batch([300, 140])
    logits, weights = small(name, pos_enc=pos_enc)(x, mask)
    assert torch.isfinite(logits).all() and weights.shape == (2, 300)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_xavier_init_is_the_notes_projection_and_head(name):
    xavier, plain = small(name), small(name, init="torch")
    head = "topk.score" if name.endswith("topk") else "classifier"
    for layer in ("proj", head):
        weight = xavier.get_submodule(layer).weight
        fan_out, fan_in = weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform's bound
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
        assert (xavier.get_submodule(layer).bias == 0).all() and (plain.get_submodule(layer).bias != 0).any()
    torch.testing.assert_close(xavier.layers[0].qkv.weight, plain.layers[0].qkv.weight)  # the rest as before


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_learned_table_says_its_limit(name):
    model = small(name, pos_enc="learned", max_len=16)
    model(*padded_batch([16]))  # at the limit: fine
    with pytest.raises(ConfigError, match="max_len=16"):
        model(*padded_batch([17]))


ORDER_AWARE = {"transmil_nystrom"}  # segment landmarks and the convolution residual see the window order


@pytest.mark.parametrize("name", sorted(set(ALL) - ORDER_AWARE))
def test_permutation_invariance_without_positions(name):
    model = small(name) if name not in TRANSFORMERS else small(name, pos_enc="none")
    x, _ = padded_batch([8])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    logits, weights = model(x)
    p_logits, p_weights = model(x[:, perm])
    torch.testing.assert_close(p_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_weights, weights[:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_order_matters_with_positions(name):
    model = small(name, pos_enc="sin")
    x, _ = padded_batch([8])
    assert not torch.allclose(model(x)[0], model(x.flip(1))[0], atol=1e-6)


def test_content_position_scale_follows_the_input_norm():
    """pos_scale_by='content': the table is pos_scale x the RMS of each bag's real windows (padding not
    counted) over the table's RMS, so windows c times larger get a table c times larger; 'constant'
    adds the same table whatever the windows."""
    h = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    content = PositionalEncoding("sin", 16, 512, 0.0, scale=0.5, scale_by="content")
    constant = PositionalEncoding("sin", 16, 512, 0.0, scale=0.5)
    table = sinusoidal_table(5, 16)[window_positions(mask)]
    for bag, n in enumerate([5, 3]):
        rms = h[bag, :n].square().mean().sqrt()
        torch.testing.assert_close(content(h, mask)[bag, :n] - h[bag, :n], 0.5 * rms * 2 ** 0.5 * table[bag, :n])
        torch.testing.assert_close(content(10 * h, mask)[bag, :n], 10 * content(h, mask)[bag, :n])
    torch.testing.assert_close(constant(10 * h, mask) - 10 * h, constant(h, mask) - h)


def test_transmil_weights_are_the_last_layers_cls_attention():
    """No second softmax: weights equal the CLS row of the last layer, renormalised over windows."""
    model = small("transmil")
    x, mask = padded_batch([6, 4])
    captured = {}
    last = model.layers[-1]
    original = last.forward

    def spy(h, key_mask, return_cls_attention=False):
        out, row = original(h, key_mask, return_cls_attention)
        captured["row"] = row
        return out, row

    last.forward = spy
    _, weights = model(x, mask)
    row = captured["row"][:, 1:]
    torch.testing.assert_close(weights, row / row.sum(1, keepdim=True))
    # the map is far from uniform-by-construction: a second softmax would squash it
    assert not torch.allclose(weights, torch.softmax(row.masked_fill(~mask, -float("inf")), 1))


def test_cls_row_matches_full_attention_map():
    """The cheap CLS row equals row 0 of PyTorch's full head-averaged attention map."""
    model = small("transmil")
    layer = model.layers[-1]
    h = torch.randn(2, 5, 16)
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    _, row = layer(h, key_mask, return_cls_attention=True)
    q, k, _ = layer.qkv(layer.norm1(h)).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    full = torch.softmax(scores.masked_fill(~key_mask[:, None, None, :], -float("inf")), -1).mean(1)
    torch.testing.assert_close(row, full[:, 0])


def test_topk_weights_mark_the_top_windows():
    model = small("transformer_mil_topk", k=2)
    x, mask = padded_batch([5, 1])
    logits, weights = model(x, mask)
    assert sorted(weights[0].tolist())[-2:] == [0.5, 0.5] and (weights[0] > 0).sum() == 2
    assert weights[1, 0] == 1.0  # a one-window bag averages its single window


def test_unknown_model_and_key_are_named():
    with pytest.raises(ConfigError, match="did you mean 'transmil'"):
        build_model("transmill")
    with pytest.raises(ConfigError, match="did you mean 'nhead'"):
        make_config("transmil", nheads=4)
    with pytest.raises(ConfigError, match="divisible"):
        make_config("transmil", d_model=10, nhead=4)


def test_a_variant_refuses_overrides_that_contradict_its_definition():
    with pytest.raises(ConfigError, match="transmil_nystrom is defined by attention='nystrom'.*use model 'transmil'"):
        make_config("transmil_nystrom", attention="full")
    with pytest.raises(ConfigError, match="pool='topk'"):
        make_config("transformer_mil_topk", pool="attention")
    assert make_config("transmil_nystrom", attention="nystrom", nhead=2).attention == "nystrom"  # repeating is fine


@pytest.mark.parametrize("name,tag", [
    ("attention_mil", "abmil_h128_drop01"),
    ("attention_mil_gated", "abmil_gated_h128_drop01"),
    ("transformer_mil", "tmil_d128_h4_L2_ff256_drop01_sin"),
    ("transformer_mil_topk", "tmil_topk2_d128_h4_L2_ff256_drop01_sin"),
    ("transmil", "transmil_cls_d128_h4_L2_ff256_drop01_sin"),
    ("transmil_dual", "transmil_dual_d128_h4_L2_ff256_drop01_sin"),
    ("instance_max", "imax_h128_drop01"),
])
def test_tags_follow_the_design_note(name, tag):
    assert make_config(name).tag() == tag


def test_encoder_layer_computes_what_torch_transformer_layer_computes():
    """TransformerMIL's layer is the note's nn.TransformerEncoderLayer(norm_first=True), with
    linear-memory attention: the same weights give the same outputs on padded bags."""
    model = small("transformer_mil")
    ours = model.layers[0]
    ref = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.qkv.bias)
        ref.self_attn.out_proj.load_state_dict(ours.out.state_dict())
        ref.linear1.load_state_dict(ours.ff[0].state_dict())
        ref.linear2.load_state_dict(ours.ff[3].state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    h = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out, _ = ours(h, mask)
    expected = ref(h, src_key_padding_mask=~mask)
    torch.testing.assert_close(out[mask], expected[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transformer_mil", "transmil"])
def test_long_bag_training_path_respects_the_mask(name):
    """Bags past the chunking threshold take the chunked, recomputed attention in training; padding
    must still change nothing (dropout so small that nothing is dropped, yet the chunked path runs)."""
    model = small(name, dropout_p=1e-12).train()
    x, mask = padded_batch([1500, 1100])
    logits, weights = model(x, mask)
    alone, alone_weights = model(x[1:, :1100])
    torch.testing.assert_close(logits[1:], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(weights[1:, :1100], alone_weights, atol=1e-5, rtol=1e-4)
    assert (weights[1, 1100:] == 0).all()
