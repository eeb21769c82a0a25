"""``python -m device_registry.agent`` is ``edgeslim-agent``."""

import sys

from device_registry.agent.cli import main

sys.exit(main())
