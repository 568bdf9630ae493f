"""The library's errors in its own terms.

A value the library refuses raises `SettingError`, one sentence in which every setting it names is
written as `Type.field` between backticks: the dataclass field or argument that holds it
(`SamplerSpec.steps`, `ConfidenceOptions.threshold`, `GenerationRequest.length`). Read as it is, the
sentence names the library's fields (backticks dropped); an application says the same sentence in
its own names with `render(names)`, a table from those fields to its keys (duolm.app.fields: the
config keys; a server would map them to its request fields). Nobody reads a message to find a key.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

FIELD = re.compile(r"`([A-Za-z_]\w*(?:\.\w+)+)`")


class SettingError(ValueError):
    """One sentence refusing a value; `fields` are the library fields it names, in order."""

    def __init__(self, template: str):
        self.template = template
        self.fields = FIELD.findall(template)
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The sentence with each field written as `names` calls it (its own name where names has none)."""
        names = names or {}
        return FIELD.sub(lambda m: names.get(m.group(1), m.group(1)), self.template)


__all__ = ["FIELD", "SettingError"]
