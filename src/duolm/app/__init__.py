"""The application above the library: the `duolm` command, its Hydra config, the jobs behind each
command, the three-line API, the Hub push and the lm-eval adapter.

The layers (tests/test_layers.py holds them):
- duolm.app (this package) composes the library from a config; it may import anything in duolm.
- the library (every other duolm module) never imports duolm.app, omegaconf or hydra, and takes
  typed objects (dataclasses, tensors, paths), never a config.
"""
