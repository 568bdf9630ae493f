"""Reaching the Hugging Face Hub, or saying in one sentence that it cannot be reached.

Without a network the Hub's libraries retry for half a minute and then raise a ConnectionError
that reads like a bug, or one that another layer blames on whatever it was doing (a cache folder).
`from_hub(what, instead)` wraps every call that reads a hub dataset, model or task: it first asks
the Hub once (a few seconds at most, the answer kept for the process); when it does not answer,
the body runs against the local caches only (the libraries' offline mode, so a cached dataset
still loads, in seconds), and if that fails the error is one sentence: the Hub could not be
reached, `what` is not in the local cache, and what to pass instead.
"""
from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
import urllib.request

PROBE_SECONDS = 5.0
_reachable: bool | None = None


class HubUnreachable(RuntimeError):
    """The Hub could not be reached and what was asked for is not cached; the message is one sentence.
    (Not an OSError, as the libraries' ConnectionError is: nobody up the stack should read it as a
    file's problem.)"""


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_by_choice() -> bool:
    return any(os.environ.get(k, "").upper() in {"1", "ON", "YES", "TRUE"}
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether the Hub answers an HTTP request (any status counts) within `timeout` seconds; asked
    once per process. False when the user chose offline mode (HF_HUB_OFFLINE=1)."""
    global _reachable
    if _offline_by_choice():
        return False
    if _reachable is None:
        try:
            urllib.request.urlopen(_endpoint() + "/api/whoami-v2", timeout=timeout).close()
            _reachable = True
        except urllib.error.HTTPError:  # it answered (401 without a token)
            _reachable = True
        except (OSError, ValueError):  # no route, no name resolution, a timeout, a bad HF_ENDPOINT
            _reachable = False
    return _reachable


def _use_local_caches() -> None:
    """The Hub libraries' offline mode, also for those already imported (they read the variable once)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True


@contextlib.contextmanager
def from_hub(what: str, instead: str):
    """Run the body, which reads `what` from the Hub; offline, from the local caches only, and a
    failure there is HubUnreachable: '<the Hub could not be reached> and <what> is not in the local
    cache; <instead>'."""
    if hub_reachable():
        yield
        return
    _use_local_caches()
    try:
        yield
    except HubUnreachable:
        raise
    except Exception as err:  # noqa: BLE001 - offline, every failure of a hub read is this one
        why = "HF_HUB_OFFLINE is set" if _offline_by_choice() and _reachable is None else "no network"
        raise HubUnreachable(f"the Hugging Face Hub could not be reached ({why}) and {what} is not in the local "
                             f"cache ({type(err).__name__}); {instead}") from err
