import os

import numpy as np
import pytest
import torch

from arcmil.demo import make_demo_bags

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: two workers on two cores, one torch thread each
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_bags():
    """120 demo documents: enough for a stratified split with both classes everywhere."""
    return make_demo_bags(n_bags=120, seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def fitted_pooled(name: str, input_dim: int, n_outputs: int = 1, seed: int = 0):
    """A classical model (pooled_*, fisher_vector) fitted on 40 random bags (its decision function is then
    not zero), for the tests that run every registered model; one class per output beyond binary."""
    from arcmil.models import build_model

    rng = np.random.default_rng(seed)
    model = build_model(name, input_dim=input_dim, n_outputs=n_outputs)
    bags = [torch.as_tensor(rng.normal(size=(rng.integers(3, 9), input_dim)), dtype=torch.float32) for _ in range(40)]
    if model.config.encoding == "fisher":
        model.fit_mixture(torch.cat(bags).numpy())
    features = np.stack([model.encode(b[None], torch.ones(1, len(b), dtype=torch.bool))[0].numpy() for b in bags])
    labels = np.arange(40) % max(2, n_outputs)
    model.fit_features(features, labels, "binary" if n_outputs == 1 else "multiclass")
    return model.eval()
