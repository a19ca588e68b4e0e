"""The fast training path computes what the plain path computes: same batches, same losses."""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from arcmil.data import Normalizer, make_loader
from arcmil.demo import make_demo_bags
from arcmil.labels import BINARY
from arcmil.models import build_model
from arcmil.scoring import evaluate
from arcmil.train import TrainConfig, make_optimizer, train_one_epoch


def plain_batches(bags, batches):
    """Bag-by-bag padding of already normalised bags, the way a notebook collates."""
    for index in batches:
        x = pad_sequence([torch.from_numpy(bags.bags[i]) for i in index], batch_first=True)
        lengths = torch.tensor([len(bags.bags[i]) for i in index])
        mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        yield x, mask, torch.as_tensor(bags.labels[index], dtype=torch.float32)


@pytest.mark.parametrize("name", ["attention_mil", "transformer_mil", "transmil"])
def test_fast_and_plain_paths_give_the_same_validation_losses(name):
    bags = make_demo_bags(n_bags=80, seed=3)
    keep = np.random.default_rng(0).integers(3, 11, size=80)  # ragged bags: padding in every batch
    bags = bags.with_bags([b[:k] for b, k in zip(bags.bags, keep)])
    train, val = bags.subset(np.arange(60)), bags.subset(np.arange(60, 80))
    norm = Normalizer("l2")
    overrides = {"dropout_p": 0.0, **({"d_model": 32, "nhead": 2} if name != "attention_mil" else {})}
    cfg = TrainConfig(batch_size=8, lr=3e-3, warmup_epochs=0)  # the optimizer starts at lr, as the plain one
    criterion = BINARY.criterion(train.labels)
    torch.manual_seed(0)
    fast = build_model(name, input_dim=bags.dim, **overrides)
    plain = build_model(name, input_dim=bags.dim, **overrides)
    plain.load_state_dict(fast.state_dict())
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=1, normalizer=norm)
    fast_opt, _ = make_optimizer(fast, cfg, len(loader))  # its schedule is never stepped here
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = make_loader(train, cfg.batch_size, shuffle=True, seed=1)  # same seed: same batches
    val_loader = make_loader(val, 5, normalizer=norm)
    norm_train, norm_val = norm(train), norm(val)
    for _ in range(3):
        train_one_epoch(fast, loader, criterion, fast_opt, "cpu")
        plain.train()
        for x, mask, y in plain_batches(norm_train, order.batches()):
            loss = criterion(plain(x, mask)[0], y)
            plain_opt.zero_grad()
            loss.backward()
            plain_opt.step()
        fast_loss = evaluate(fast, val_loader, criterion).loss
        plain.eval()
        with torch.no_grad():
            losses = [criterion(plain(x, m)[0], y).item() * len(y)
                      for x, m, y in plain_batches(norm_val, [np.arange(20)])]
        assert fast_loss == pytest.approx(sum(losses) / 20, rel=1e-4)


def test_bf16_autocast_scores_close_to_fp32():
    bags = make_demo_bags(n_bags=40, seed=1)
    torch.manual_seed(0)
    model = build_model("transmil", input_dim=bags.dim, d_model=32, nhead=2)
    loader = make_loader(bags, 16, normalizer=Normalizer("l2"))
    fp32, bf16 = evaluate(model, loader), evaluate(model, loader, precision="bf16")
    assert bf16.probs.dtype == np.float64 and not np.array_equal(fp32.probs, bf16.probs), "autocast must engage"
    np.testing.assert_allclose(bf16.probs, fp32.probs, atol=0.02)
