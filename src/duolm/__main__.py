"""`python -m duolm ...` (and `torchrun -m duolm ...`): the `duolm` command."""
import sys

from duolm.app.cli import main

sys.exit(main())
