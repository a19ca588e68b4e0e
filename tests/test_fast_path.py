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


def ragged_demo(n_bags=60, seed=3):
    bags = make_demo_bags(n_bags=n_bags, seed=seed)
    keep = np.random.default_rng(0).integers(3, 11, size=n_bags)
    return bags.with_bags([b[:k] for b, k in zip(bags.bags, keep)])


@pytest.mark.parametrize("kind", ["l2", "standardize", "none"])
@pytest.mark.parametrize("ragged", [True, False])
def test_resident_batches_equal_the_host_batches(kind, ragged):
    """Bags held on the device (here the CPU stands in for a GPU) give exactly the batches the host
    collates: windows, zero padding, mask, labels and positions, for shuffled and scoring loaders."""
    from arcmil.data import ResidentBags

    bags = ragged_demo() if ragged else make_demo_bags(n_bags=60, seed=3)
    part = bags.subset(np.arange(5, 55))  # a split: its bags are not the file's first rows
    norm = Normalizer.fit(kind, part)
    for shuffle in (True, False):
        host = make_loader(part, 8, shuffle=shuffle, seed=2, normalizer=norm, bucket=True)
        resident = make_loader(part, 8, shuffle=shuffle, seed=2, normalizer=norm, bucket=True, resident_on="cpu")
        pairs = list(zip(host, resident, strict=True))
        assert len(pairs) == len(host)
        for a, b in pairs:
            torch.testing.assert_close(b.x, a.x, rtol=0, atol=0)
            assert torch.equal(a.mask, b.mask) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)
        assert ragged == any(not bool(a.mask.all()) for a, _ in pairs)
    assert isinstance(resident._resident, ResidentBags)
    assert len(resident._resident.windows) == int(part.lengths.sum()) + 1  # and the zero row


def test_a_resident_training_run_matches_the_host_run():
    """Same seed, same model: training from device-held bags gives the host path's losses exactly."""
    bags = ragged_demo(80)
    train, val = bags.subset(np.arange(60)), bags.subset(np.arange(60, 80))
    norm, cfg = Normalizer("l2"), TrainConfig(batch_size=8)
    criterion = BINARY.criterion(train.labels)
    losses = {}
    for resident_on in (None, "cpu"):
        torch.manual_seed(0)
        model = build_model("transformer_mil", input_dim=bags.dim, d_model=32, nhead=2)
        loader = make_loader(train, 8, shuffle=True, seed=1, normalizer=norm, bucket=True, resident_on=resident_on)
        optimizer, scheduler = make_optimizer(model, cfg, len(loader))
        val_loader = make_loader(val, 16, normalizer=norm, bucket=True, resident_on=resident_on)
        losses[resident_on] = [(train_one_epoch(model, loader, criterion, optimizer, "cpu", batch_scheduler=scheduler),
                                evaluate(model, val_loader, criterion).loss) for _ in range(2)]
    assert losses[None] == losses["cpu"]


def test_bags_stay_on_the_gpu_only_when_in_memory_and_small_enough(tmp_path, monkeypatch):
    from arcmil.data import ResidentBags, save_bags
    from arcmil.data.packed import PackedBags
    from arcmil.data.store import convert_to_store, open_store

    bags = make_demo_bags(n_bags=20, seed=1)  # a list of arrays
    packed = bags.with_bags(PackedBags.from_list(bags.bags))
    size = 4 * bags.dim * (int(bags.lengths.sum()) + 1)  # float32 windows and the zero row
    assert not ResidentBags.fits([bags], "cpu")
    convert_to_store(save_bags(bags, tmp_path / "bags.npz"), tmp_path / "store")
    store = open_store(tmp_path / "store")
    assert not ResidentBags.fits([packed, store], "cuda")  # decided before asking CUDA for its free memory
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * size)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * size)  # one size cached, unused
    for free, fits in ((7 * size, True), (7 * size - 1, False)):  # both parts in a quarter of free + cached
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 10 * free))
        assert ResidentBags.fits([bags, packed], "cuda") is fits
        assert ResidentBags.fits([packed], "cuda:0")


def test_scoring_runs_where_the_model_is_and_on_the_cpu_for_a_module_without_tensors(monkeypatch):
    """No device named: batches go to the model's device (here 'meta', which no default could guess)."""
    from arcmil.data import Batch
    from arcmil.scoring import model_device, score_bags

    class Sent(Exception):
        pass

    def record(batch, device):
        raise Sent(str(device))

    bags = make_demo_bags(n_bags=6, seed=1)
    model = build_model("attention_mil", input_dim=bags.dim, hidden_dim=8)
    assert model_device(model) == torch.device("cpu") == model_device(torch.nn.Identity())
    monkeypatch.setattr(Batch, "to", record)
    with pytest.raises(Sent, match="^meta$"):
        score_bags(model.to("meta"), bags, Normalizer("l2"))
