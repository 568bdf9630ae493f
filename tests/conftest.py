import os

import pytest
import torch

from tiny_run import write_corpus  # tests/ is on pytest's pythonpath (pyproject.toml)

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Slow tests run in CI (CI=true) or with DUOLM_SLOW=1 or -m slow; skipped otherwise."""
    if os.environ.get("CI") or os.environ.get("DUOLM_SLOW") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set DUOLM_SLOW=1 (CI sets CI=true)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def corpus(tmp_path):
    """A folder of small text documents for data=local runs."""
    return write_corpus(tmp_path / "corpus")
