"""``python -m edgeslim_agent`` is ``edgeslim-agent``."""

import sys

from edgeslim_agent.cli import main

sys.exit(main())
