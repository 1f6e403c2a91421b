"""``python -m cyberhost.inference`` = ``cyberhost generate``."""

import sys

from .cli import main

sys.exit(main())
