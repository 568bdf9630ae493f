"""The math: schedules, forward processes, parameterisations, losses, methods, Duo's operator and
block diffusion's attention masks, as small pure-PyTorch functions and modules.

Nothing here knows a network's class, a file format, a sampler's loop or the trainer; everything
above (models, sampling, training, evaluation, the application) is written against it.
"""
