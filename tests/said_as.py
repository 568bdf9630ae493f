"""Library errors are SettingErrors naming the library's fields; the application says them in config
keys (duolm.app.fields). `raises_said_as(pattern)` checks both: the library raised a SettingError,
and the sentence a user of the command reads matches `pattern` (the config-key sentence)."""
from __future__ import annotations

import re
from contextlib import contextmanager

import pytest

from duolm.errors import SettingError


@contextmanager
def raises_said_as(pattern: str):
    from duolm.app.fields import config_message

    with pytest.raises(SettingError) as info:
        yield info
    said = config_message(info.value)
    assert re.search(pattern, said), f"{said!r} does not match {pattern!r}"
    assert "`" not in str(info.value)  # read as it is, the sentence names the library's fields plainly
