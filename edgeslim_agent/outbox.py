"""Results the server has not acknowledged yet, kept on disk until it does.

One file per result (``<deployment>-<seq>.json``), written atomically, removed on the server's
``ack``. After a reconnect or a restart every file left is sent again; the server stores results
by (deployment, device, seq), so a result sent twice is stored once.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgeslim_agent.config import ensure_dir, write_atomic
from edgeslim_agent.protocol import ProtocolError, Result, decode, encode

_NAME = re.compile(r"^(\d+)-(\d+)\.json$")


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = ensure_dir(directory)

    def _path(self, deployment_id: int, seq: int) -> Path:
        return self.directory / f"{deployment_id:012d}-{seq:06d}.json"

    def put(self, result: Result) -> None:
        """Persist a result before it is sent; an existing one with the same key is kept."""
        path = self._path(result.deployment_id, result.seq)
        if path.exists():
            return
        write_atomic(path, encode(result).encode())

    def ack(self, deployment_id: int, seq: int) -> bool:
        try:
            os.unlink(self._path(deployment_id, seq))
            return True
        except FileNotFoundError:
            return False

    def pending(self) -> list[Result]:
        """Unacknowledged results, oldest deployment and lowest seq first."""
        out: list[Result] = []
        for path in sorted(self.directory.iterdir()):
            if not _NAME.match(path.name):
                continue  # temp files of an interrupted write
            try:
                msg = decode(path.read_text())
            except (OSError, ProtocolError, json.JSONDecodeError):
                path.rename(path.with_suffix(".corrupt"))
                continue
            if isinstance(msg, Result):
                out.append(msg)
        return out

    def seqs(self, deployment_id: int) -> set[int]:
        prefix = f"{deployment_id:012d}-"
        found = set()
        for path in self.directory.iterdir():
            m = _NAME.match(path.name)
            if m and path.name.startswith(prefix):
                found.add(int(m.group(2)))
        return found

    def __len__(self) -> int:
        return sum(1 for p in self.directory.iterdir() if _NAME.match(p.name))
