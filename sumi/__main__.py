"""``python -m sumi ...`` (what ``torchrun -m sumi train ...`` runs)."""

import sys

from sumi.cli import main

sys.exit(main())
