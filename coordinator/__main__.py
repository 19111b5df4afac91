"""``python -m coordinator``: the ``coordinator`` command."""

import sys

from coordinator.cli.main import main

sys.exit(main())
