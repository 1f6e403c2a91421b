"""``python -m cyberhost.evaluation`` runs ``cyberhost evaluate``."""

import sys

from cyberhost.evaluation.cli import main

sys.exit(main())
