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
