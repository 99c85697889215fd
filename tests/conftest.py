import os

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # Generated data sets go to a per-session cache, not the user's home.
    os.environ["SHARPNESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def restore_measures():
    """Measures a test registers are removed again afterwards."""
    from sharpness.measures.registry import MEASURES

    before = dict(MEASURES)
    yield
    MEASURES.clear()
    MEASURES.update(before)
