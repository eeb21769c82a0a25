"""``edgeslim methods``: list the registered compression methods and their parameters.

``--markdown`` prints the method reference table of the docs, generated from the registry;
``--json`` prints each method's JSON Schema (what the REST API and the wizard use).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "methods",
        help="list compression methods and their parameters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print the docs' method table")
    fmt.add_argument("--json", action="store_true", help="print each method's JSON Schema")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from compression.registry import config_json_schema, list_methods

    if args.markdown:
        from compression.methods.docs import methods_markdown

        print(methods_markdown(), end="")
        return 0
    if args.json:
        data = {
            spec.name: {
                "summary": spec.summary,
                "inputs": sorted(spec.scope.inputs),
                "output": spec.scope.output,
                "tasks": sorted(spec.scope.tasks),
                "config": config_json_schema(spec.config_cls),
            }
            for spec in list_methods()
        }
        print(json.dumps(data, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for spec in list_methods():
        scope = spec.scope
        table = Table(
            title=f"[bold]{spec.name}[/] — {spec.summary}",
            title_justify="left",
            caption=f"input: {', '.join(sorted(scope.inputs))}; output: {scope.output or 'same'}; "
            f"tasks: {', '.join(sorted(scope.tasks))}",
            caption_justify="left",
        )
        for col in ("parameter", "type", "default", "range", "help"):
            table.add_column(col)
        for p in spec.params():
            if p.choices is not None:
                rng = ", ".join(str(c) for c in p.choices)
            else:
                bounds = [
                    f"{op} {v:g}"
                    for op, v in ((">=", p.ge), (">", p.gt), ("<=", p.le), ("<", p.lt))
                    if v is not None
                ]
                rng = ", ".join(bounds)
            table.add_row(
                p.name,
                p.type + (" | null" if p.optional else ""),
                json.dumps(p.default),
                rng,
                p.help,
            )
        console.print(table)
    return 0
