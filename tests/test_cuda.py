"""What only a CUDA GPU can show: bags held on the GPU, bf16 there, its RNG in resume, compile, NCCL.
Skipped without one (CI has none); run on a GPU machine with benchmarks/device_check.sh."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from arcmil.data import Normalizer, ResidentBags, make_loader, save_bags
from arcmil.demo import make_demo_bags
from arcmil.models import build_model
from arcmil.pipeline import make_loaders, prepare_data, run_experiment
from arcmil.runstate import rng_state, set_rng_state
from arcmil.scoring import evaluate, score_bags
from arcmil.train import TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMALL = {"d_model": 32, "nhead": 2, "dim_feedforward": 64}


def ragged(n_bags=80, seed=3):
    bags = make_demo_bags(n_bags=n_bags, seed=seed)
    keep = np.random.default_rng(0).integers(3, 11, size=n_bags)
    return bags.with_bags([b[:k] for b, k in zip(bags.bags, keep)])


def test_training_and_validation_bags_stay_on_the_gpu_and_batch_as_on_the_host():
    bags = ragged()
    data = prepare_data(bags, TrainConfig(seed=0))
    loaders = make_loaders(data, TrainConfig(batch_size=8), device="cuda")
    assert loaders["train"].resident_on == "cuda" and loaders["val"].resident_on == "cuda"
    assert loaders["test"].resident_on is None  # scored once, after training
    host = make_loader(data.parts["train"], 8, shuffle=True, seed=0, normalizer=data.normalizer, bucket=True)
    for a, b in zip(host, loaders["train"], strict=True):
        assert b.x.is_cuda and b.mask.is_cuda and b.y.is_cuda
        torch.testing.assert_close(b.x.cpu(), a.x, rtol=0, atol=0)
        assert torch.equal(b.mask.cpu(), a.mask) and torch.equal(b.y.cpu(), a.y)


def test_a_seeded_cuda_run_repeats_and_agrees_with_the_cpu_run():
    bags = make_demo_bags(n_bags=200, seed=2)
    cfg = TrainConfig(seed=3, epochs=3, progress=False, device="cuda")
    a = run_experiment(bags, "transformer_mil", cfg, **SMALL)
    b = run_experiment(bags, "transformer_mil", cfg, **SMALL)
    # within float error, not bit for bit: memory-efficient attention's backward adds in no fixed order
    np.testing.assert_allclose([r["val_loss"] for r in a.history], [r["val_loss"] for r in b.history], rtol=1e-5)
    np.testing.assert_allclose(a.predictions["prob"], b.predictions["prob"], atol=1e-5)
    assert a.environment["device"].startswith("cuda")
    plain = run_experiment(bags, "transformer_mil", cfg, dropout_p=0.0, **SMALL)
    cpu = run_experiment(bags, "transformer_mil", replace(cfg, device="cpu"), dropout_p=0.0, **SMALL)
    np.testing.assert_allclose([r["val_loss"] for r in plain.history], [r["val_loss"] for r in cpu.history],
                               rtol=1e-3)


def test_bf16_on_cuda_scores_close_to_fp32():
    bags = make_demo_bags(n_bags=40, seed=1)
    torch.manual_seed(0)
    model = build_model("transmil", input_dim=bags.dim, **SMALL).cuda()
    loader = make_loader(bags, 16, normalizer=Normalizer("l2"))
    fp32, bf16 = evaluate(model, loader, device="cuda"), evaluate(model, loader, device="cuda", precision="bf16")
    assert not np.array_equal(fp32.probs, bf16.probs), "autocast must engage"
    np.testing.assert_allclose(bf16.probs, fp32.probs, atol=0.02)


def test_the_cuda_rng_state_round_trips_through_resume_state():
    state = rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)  # the same dropout draws after a resume


def test_a_long_bag_scores_on_the_gpu_with_short_batch_mates():
    torch.manual_seed(0)
    model = build_model("transformer_mil", input_dim=256, **SMALL).cuda()
    rng = np.random.default_rng(0)
    lengths = [20_000, 5, 7]
    bags = make_demo_bags(n_bags=3, seed=0).with_bags([rng.normal(size=(n, 256)).astype(np.float32)
                                                       for n in lengths])
    scored = score_bags(model, bags, device="cuda")
    assert np.isfinite(scored.probs).all() and [len(w) for w in scored.weights] == lengths
    np.testing.assert_allclose([w.sum() for w in scored.weights], 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def eager_cuda_run():
    cfg = TrainConfig(seed=0, epochs=2, progress=False, device="cuda")
    return cfg, run_experiment(make_demo_bags(n_bags=120, seed=1), "transformer_mil", cfg, dropout_p=0.0, **SMALL)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_on_cuda_gives_eager_losses_without_dropout(eager_cuda_run, mode):
    cfg, eager = eager_cuda_run
    compiled = run_experiment(make_demo_bags(n_bags=120, seed=1), "transformer_mil",
                              replace(cfg, compile=True, compile_mode=mode), dropout_p=0.0, **SMALL)
    np.testing.assert_allclose([r["val_loss"] for r in compiled.history], [r["val_loss"] for r in eager.history],
                               rtol=1e-4)


def test_torchrun_with_nccl_on_one_gpu(tmp_path):
    data = save_bags(make_demo_bags(n_bags=120, seed=1), tmp_path / "bags.npz")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "arcmil",
                           "train", "--model", "attention_mil", "--data", str(data), "--epochs", "2",
                           "--n-bootstrap", "0", "--no-progress", "--device", "cuda", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "stage3_attention_mil_results.json").read_text())
    assert results["environment"]["device"].startswith("cuda") and results["environment"]["processes"] == 1


def test_a_store_is_read_from_the_host_even_on_a_gpu(tmp_path):
    from arcmil.data.store import convert_to_store, open_store

    convert_to_store(save_bags(make_demo_bags(n_bags=20, seed=1), tmp_path / "bags.npz"), tmp_path / "store")
    assert not ResidentBags.fits([open_store(tmp_path / "store")], "cuda")
    assert ResidentBags.fits([make_demo_bags(n_bags=20, seed=1)], "cuda")


def test_a_model_on_the_gpu_is_scored_and_explained_there_by_default():
    from arcmil.explain import explain_bags

    bags = make_demo_bags(n_bags=12, seed=1)
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=bags.dim, hidden_dim=16)
    on_cpu = score_bags(model, bags, Normalizer("l2"))
    on_gpu = score_bags(model.cuda(), bags, Normalizer("l2"))  # no device named: the model's
    np.testing.assert_allclose(on_gpu.probs, on_cpu.probs, atol=1e-5)
    frame = explain_bags(model, bags, ["weights", "occlusion"], normalizer=Normalizer("l2"))
    assert len(frame) == int(bags.lengths.sum())
