import os
import sys

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


@pytest.fixture(autouse=True)
def hub_offline_mode_stays_in_its_test(monkeypatch):
    """duolm.io.hub_access.from_hub turns on the Hub libraries' offline mode for the process when the
    Hub does not answer; each test gets the environment and module constants it started with."""
    from duolm.io import hub_access

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hub_access, "_reachable", hub_access._reachable)
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:
            for name in names:
                monkeypatch.setattr(sys.modules[module], name, getattr(sys.modules[module], name))


@pytest.fixture
def corpus(tmp_path):
    """A folder of small text documents for data=local runs."""
    return write_corpus(tmp_path / "corpus")
