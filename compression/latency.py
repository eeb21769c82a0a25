"""``compression.latency`` is :mod:`edgeslim_agent.latency`, the very same module object.

The code moved into the edge agent's package because the device runs it, and the agent's wheel
holds ``edgeslim_agent`` and nothing else (docs/decisions.md, "the agent is its own
distribution"). The studio's code keeps importing it by this name; tests that patch it patch
the one module.
"""

import sys

import edgeslim_agent.latency as _module
from edgeslim_agent.latency import *  # noqa: F403  (the names mypy and readers see)

sys.modules[__name__] = _module
