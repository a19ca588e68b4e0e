import numpy as np
import pytest

from arcmil.demo import make_demo_bags


@pytest.fixture(scope="session")
def small_bags():
    """120 demo documents: enough for a stratified split with both classes everywhere."""
    return make_demo_bags(n_bags=120, seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
