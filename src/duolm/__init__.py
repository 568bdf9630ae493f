"""duolm: discrete diffusion language models (Duo, MDLM, SEDD, D3PM, AR).

    import duolm
    m = duolm.load("builtin:duo-bigtxt-dcd")
    print(m.generate(n=2, steps=8).texts)

`duolm.load` returns a duolm.app.api.Model (generate, infill, nelbo). The library's pieces live in
their modules (duolm.methods, duolm.sampling, duolm.checkpoints, ...); the application above them
(the `duolm` command, its config and jobs, the API) lives in duolm.app.
"""
__version__ = "0.1.0"


def load(name_or_path, **kwargs):
    """duolm.app.api.load: any checkpoint or built-in name -> a Model with generate / infill / nelbo."""
    # imported here, not at the top: `import duolm.sampling` (or any library module) must not pull in
    # the application and its dependencies
    from duolm.app.api import load as _load

    return _load(name_or_path, **kwargs)
