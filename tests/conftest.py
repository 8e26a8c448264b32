"""Test configuration: hypothesis profiles and shared fixtures.

Profiles (``DISCDIFF_HYPOTHESIS_PROFILE``): ``ci`` (derandomized, bounded: the default when
``CI`` is set), ``dev`` (the default otherwise), ``thorough`` (many examples).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("DISCDIFF_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Tests run thousands of tiny-tensor ops: intra-op threads only add spin-wait overhead (and
# thrash when other processes share the 2 CI cores).  The library itself sets no global flags.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator (tests never touch the global RNG)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def sumi_cache(tmp_path_factory):
    """One ``SUMI_CACHE`` for the whole session (the embedded corpus and tokenizer are built once,
    then reused by every test and tutorial that runs the tiny preset), never the user's own cache."""
    return tmp_path_factory.mktemp("sumi_cache")
