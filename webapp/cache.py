"""A JSON serializer for Django's Redis cache (instead of its default, pickle)."""

from __future__ import annotations

import json
from typing import Any


class JSONSerializer:
    """Stores values as JSON: ints raw (so ``incr`` stays atomic), everything else as JSON text.

    Pickle would let anyone who can write a cache key run code in every web process that reads
    it. What the cache holds (login-throttle counters and window ends, lock flags) is plain
    numbers; a value JSON cannot carry raises ``TypeError`` when it is set. Tuples come back as
    lists.
    """

    def dumps(self, obj: Any) -> int | bytes:
        if type(obj) is int:  # not bool: True must come back as True
            return obj
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            return json.loads(data)
