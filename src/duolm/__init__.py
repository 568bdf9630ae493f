"""duolm: discrete diffusion language models (Duo, MDLM, SEDD, D3PM, AR).

    import duolm
    m = duolm.load("builtin:duo-bigtxt-dcd")
    print(m.generate(n=2, steps=8).texts)

`duolm.load` returns a duolm.api.Model (generate, infill, nelbo); the library's pieces live in
their modules (duolm.methods, duolm.sampling, duolm.checkpoints, ...), imported on demand.
"""
__version__ = "0.1.0"


def load(name_or_path, **kwargs):
    """duolm.api.load: any checkpoint or built-in name -> a Model with generate / infill / nelbo."""
    from duolm.api import load as _load

    return _load(name_or_path, **kwargs)
