"""``python -m swarmbus.agents.app``: the ``swarmbus`` command."""

import sys

from ._cli import main

sys.exit(main())
