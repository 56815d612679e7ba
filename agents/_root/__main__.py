"""``python -m swarmbus``: the ``swarmbus`` command."""

import sys

from swarmbus.cli import main

sys.exit(main())
