"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

from pathlib import Path

HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the script named in it, from numbers measured side by side in\n"
    "one run. Re-run a script to refresh its section; the others stay as they are.\n"
)


def replace_section(path: Path, key: str, heading: str, body: str) -> None:
    """Put ``heading`` + ``body`` between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{heading}\n\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
