"""``python -m cyberhost`` = the ``cyberhost`` console script (``fit|validate|test|generate|evaluate``)."""

import sys

from cyberhost.cli import main

result = main()
# training subcommands return the LightningCLI object (success), generate/evaluate an exit status
sys.exit(result if isinstance(result, int) else 0)
