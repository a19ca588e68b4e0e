"""Linear-memory attention: the chunked exact path and the Nyström option against plain softmax attention."""
import pytest
import torch
import torch.nn.functional as F

from arcmil.models import attention
from arcmil.models.attention import ExactAttention, NystromAttention


def qkv_and_mask(t, lengths, seed=0):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(len(lengths), 2, t, 8, requires_grad=True) for _ in range(3))
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return q, k, v, mask


def test_chunked_training_path_equals_fused_attention(monkeypatch):
    """Training with dropout on long sequences goes through recomputed query chunks: same values, same gradients."""
    monkeypatch.setattr(attention, "CHUNK_FROM_TOKENS", 8)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * 2 * 40 * 7)  # 7 queries per chunk: a ragged last chunk
    q, k, v, mask = qkv_and_mask(40, [40, 23])
    # dropout so small that nothing is dropped, but large enough to select the chunked path
    chunked = ExactAttention(dropout_p=1e-12).train()(q, k, v, mask)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(chunked.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(reference.sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_chunked_dropout_is_replayed_in_backward(monkeypatch):
    """The recomputed chunk must drop the same entries as the forward pass, or gradients are wrong."""
    monkeypatch.setattr(attention, "CHUNK_FROM_TOKENS", 8)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * 2 * 16 * 4)
    q, k, v, mask = qkv_and_mask(16, [16, 9])
    layer = ExactAttention(dropout_p=0.5).train()
    torch.manual_seed(5)
    out = layer(q, k, v, mask)
    grad_v = torch.autograd.grad(out.sum(), v)[0]
    torch.manual_seed(5)  # the same dropout masks, applied without checkpointing
    plain = torch.cat([attention._softmax_attention(q[:, :, s:s + 4], k, v, mask, 0.5) for s in range(0, 16, 4)], 2)
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(grad_v, torch.autograd.grad(plain.sum(), v)[0])


def attention_part(layer, q, k, v, mask):
    """The Nystrom layer's output without its position-based convolution residual."""
    residual = attention._over_real_tokens(layer.residual, v * mask[:, None, :, None], mask, mask.cumsum(1) - 1,
                                           mask.sum(1, keepdim=True))
    return layer(q, k, v, mask) - residual


@pytest.mark.parametrize("t,lengths", [(5, [5, 3]), (40, [40, 17])])
def test_nystrom_is_exact_when_every_token_is_a_landmark(t, lengths):
    """At the default 6 pseudo-inverse iterations, not only in the limit."""
    q, k, v, mask = qkv_and_mask(t, lengths)
    layer = NystromAttention(nhead=2, num_landmarks=64, dropout_p=0.0).eval()
    with torch.no_grad():
        out = attention_part(layer, q, k, v, mask)
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    real = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], reference[real], atol=1e-5, rtol=1e-5)


def test_nystrom_short_bag_beside_a_long_one_gets_its_exact_attention():
    """A batch of short bags skips the pseudo-inverse; in a batch with a long bag it is computed, and the
    short bag's output is the same either way."""
    q, k, v, mask = qkv_and_mask(100, [100, 17])
    layer = NystromAttention(nhead=2, num_landmarks=64, dropout_p=0.0).eval()
    with torch.no_grad():
        mixed = attention_part(layer, q, k, v, mask)
        alone = attention_part(layer, q[1:, :, :17], k[1:, :, :17], v[1:, :, :17], mask[1:, :17])
    torch.testing.assert_close(mixed[1:, :, :17], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_landmarks", [8, 64])  # long bags (segment means) and short bags (exact)
def test_nystrom_landmarks_follow_rank_among_real_tokens(num_landmarks):
    """Holes (as occlusion makes) and left padding: the attention, and with it the convolution residual,
    equal those of the compacted bag."""
    q, k, v, _ = qkv_and_mask(40, [40])
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, [0, 1, 12, 25, 39]] = False  # left padding, two interior holes, right padding
    layer = NystromAttention(nhead=2, num_landmarks=num_landmarks, dropout_p=0.0).eval()
    with torch.no_grad():
        holed = attention_part(layer, q, k, v, mask)
        keep = mask[0]
        compact = attention_part(layer, q[:, :, keep], k[:, :, keep], v[:, :, keep], mask[:, keep])
        whole = layer(q, k, v, mask), layer(q[:, :, keep], k[:, :, keep], v[:, :, keep], mask[:, keep])
    torch.testing.assert_close(holed[:, :, keep], compact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole[0][:, :, keep], whole[1], atol=1e-5, rtol=1e-5)


def test_nystrom_on_long_sequences_ignores_padding():
    q, k, v, mask = qkv_and_mask(600, [600, 450])
    layer = NystromAttention(nhead=2, num_landmarks=32, dropout_p=0.0).eval()
    with torch.no_grad():
        out = layer(q, k, v, mask)
        alone = layer(q[1:, :, :450], k[1:, :, :450], v[1:, :, :450], mask[1:, :450])
        garbage = [x.detach().clone() for x in (q, k, v)]
        for x in garbage:
            x[1, :, 450:] = 1e3
        with_garbage = layer(*garbage, mask)
    torch.testing.assert_close(out[1:, :, :450], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_garbage[:, :, :450], out[:, :, :450], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all() and out.shape == (2, 2, 600, 8)
