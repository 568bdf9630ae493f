"""The thin training layer on Lightning: no diffusion math lives here."""
