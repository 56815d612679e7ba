"""``python -m swarmbus``: the ``swarmbus`` command."""

import sys

from swarmbus.agents.app import main

sys.exit(main())
