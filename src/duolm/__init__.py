"""duolm: discrete diffusion language models (Duo, MDLM, SEDD, D3PM, AR).

    import duolm
    m = duolm.load("builtin:duo-bigtxt-dcd")
    print(m.generate(n=2, steps=8).texts)

`duolm.load` returns a duolm.app.api.Model (generate, infill, nelbo). The library's pieces live in
their layers, each a package (tests/test_layers.py keeps the order):

- duolm.io: atomic writes, the Hub's door, the offline SmolLM2 folder, progress lines;
- duolm.core: the math (schedules, processes, parameterisations, losses, methods, Duo's operator,
  block attention);
- duolm.models (backbones under duolm.contracts.Backbone) and duolm.data (corpora, tokenizers, the
  token store);
- duolm.checkpoints (every format a model comes in) and duolm.sampling (samplers and generation);
- duolm.evaluation and duolm.training (objectives, curriculum, distillation, the Lightning module);
- duolm.app, the application: the `duolm` command, its config and jobs, the API, the Hub.
"""
__version__ = "0.1.0"


def load(name_or_path, **kwargs):
    """duolm.app.api.load: any checkpoint or built-in name -> a Model with generate / infill / nelbo."""
    # imported here, not at the top: `import duolm.sampling` (or any library module) must not pull in
    # the application and its dependencies
    from duolm.app.api import load as _load

    return _load(name_or_path, **kwargs)
