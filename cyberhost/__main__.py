"""``python -m cyberhost`` = the ``cyberhost`` console script (``fit|validate|test|generate|evaluate``)."""

import sys

from cyberhost.cli import console_main

sys.exit(console_main())
