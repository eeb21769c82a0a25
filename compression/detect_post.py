"""``compression.detect_post`` is :mod:`edgeslim_agent.detect_post`, the very same module object.

Detector post-processing (box decoding, NMS, the detector's metadata) lives in the edge agent's
package because the device runs it after ONNX Runtime, and the agent's wheel holds
``edgeslim_agent`` and nothing else (docs/decisions.md, "the agent is its own distribution").
The studio's code imports it by this name; tests that patch it patch the one module.
"""

import sys

import edgeslim_agent.detect_post as _module
from edgeslim_agent.detect_post import *  # noqa: F403  (the names mypy and readers see)

sys.modules[__name__] = _module
