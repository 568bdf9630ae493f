"""duolm data: build (or map) the token store of data=... and report it."""
from __future__ import annotations

import json

from duolm.app.data_settings import load_data  # not training_run: `duolm data` needs no Lightning


def cmd_data(cfg, parts):
    """Build the token store of cfg.data (or map the existing one) and report it."""
    tokenizer, splits = load_data(cfg)
    out = {"store": str(next(iter(splits.values())).directory.parent), "tokenizer": tokenizer.to_dict(),
           "length": cfg.model.length, "blocks": cfg.data.blocks,
           "splits": {k: {"blocks": len(s), **s.meta} for k, s in splits.items()}}
    print(json.dumps(out, indent=1))
    return 0
