"""``edgeslim sensitivity``: run a layer sensitivity analysis on a server, show it, and turn it
into a channel_pruning stage. Only the REST API is used (token auth)::

    edgeslim sensitivity run --model 12 --dataset 3 --ratios 0.25,0.5,0.75
    edgeslim sensitivity show 7
    edgeslim sensitivity stage 7 --max-drop 1.0 > stage.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from webapp.cli.jobs import EXIT_BAD_INPUT, EXIT_FAILED, ApiError, Client, _client

TERMINAL = {"SUCCEEDED", "FAILED"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sensitivity", help="layer sensitivity: prune each layer alone, measure val accuracy"
    )

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 0

    p.set_defaults(func=usage)
    actions = p.add_subparsers(dest="sensitivity_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        # The same flags and environment variables as ``edgeslim jobs``.
        q.add_argument(
            "--server", default=os.environ.get("EDGESLIM_SERVER", "http://127.0.0.1:8000")
        )
        q.add_argument("--token", default=os.environ.get("EDGESLIM_TOKEN", ""))

    r = actions.add_parser("run", help="start an analysis and wait for its table")
    r.add_argument("--model", type=int, required=True, help="id of a ready PyTorch version")
    r.add_argument("--dataset", type=int, required=True, help="id of a ready dataset")
    r.add_argument("--ratios", default="0.25,0.5,0.75", help="comma-separated, e.g. 0.25,0.5")
    r.add_argument("--importance", choices=["l1", "l2", "bn_scale"], default="l1")
    r.add_argument("--round-to", type=int, default=1)
    r.add_argument("--no-wait", action="store_true", help="print the id and return")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument(
        "--timeout", type=float, default=6 * 3600, help="give up waiting after this many seconds"
    )
    common(r)
    r.set_defaults(func=run)

    s = actions.add_parser("show", help="an analysis's status and table")
    s.add_argument("analysis", type=int)
    s.add_argument("--json", action="store_true")
    common(s)
    s.set_defaults(func=show)

    st = actions.add_parser(
        "stage", help="print a channel_pruning stage (JSON) with per-layer ratios in a tolerance"
    )
    st.add_argument("analysis", type=int)
    st.add_argument("--max-drop", type=float, required=True, help="points of val accuracy")
    common(st)
    st.set_defaults(func=stage)


def _table(item: dict[str, Any]) -> str:
    result = item.get("result")
    if not result:
        line = f"analysis {item['id']}: {item['status']} {item.get('progress', 0) * 100:.0f}%"
        return line + (f" ({item['error']})" if item.get("error") else "")
    ratios = result["ratios"]
    base = result["baseline_val_acc"]
    lines = [
        f"analysis {item['id']}: baseline val accuracy {base:.2f}% on {result['samples']} "
        f"{result['split']} images; cells: val accuracy drop in points (channels left)",
        f"{'layer':<28}{'channels':>9}"
        + "".join(f"{'ratio ' + format(r, 'g'):>18}" for r in ratios),
    ]
    for layer in result["layers"]:
        cells = "".join(
            f"{f'{base - acc:+.2f} ({kept})':>18}"
            for acc, kept in zip(layer["val_acc"], layer["kept"], strict=True)
        )
        lines.append(f"{layer['name']:<28}{layer['channels']:>9}{cells}")
    return "\n".join(lines)


def _wait(client: Client, url: str, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while True:
        item: dict[str, Any] = client.get(url)
        if item["status"] in TERMINAL:
            return item
        if time.monotonic() > deadline:
            return None
        print(f"\r{item['status']} {item['progress'] * 100:3.0f}% {item['message'][:60]:<60}",
              end="", file=sys.stderr)  # fmt: skip
        time.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        ratios = [float(x) for x in args.ratios.split(",") if x.strip()]
    except ValueError:
        print(
            f"edgeslim sensitivity: --ratios must be numbers, got {args.ratios!r}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    body = {
        "model_version": args.model,
        "dataset": args.dataset,
        "ratios": ratios,
        "importance": args.importance,
        "round_to": args.round_to,
    }
    try:
        item = client.post("/api/v1/sensitivity/", body)
    except ApiError as exc:
        print(f"edgeslim sensitivity: refused: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.no_wait:
        print(item["id"])
        return 0
    done = _wait(client, item["url"], args.timeout)
    print(file=sys.stderr)
    if done is None:
        print(f"edgeslim sensitivity: analysis {item['id']} not finished in {args.timeout:g} s "
              "(it goes on; see `edgeslim sensitivity show`)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    item = done
    print(json.dumps(item["result"], indent=2) if args.json else _table(item))
    return 0 if item["status"] == "SUCCEEDED" else EXIT_FAILED


def show(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        item = client.get(f"/api/v1/sensitivity/{args.analysis}/")
    except ApiError as exc:
        print(f"edgeslim sensitivity: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(item, indent=2) if args.json else _table(item))
    return 0 if item["status"] != "FAILED" else EXIT_FAILED


def stage(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        out = client.post(
            f"/api/v1/sensitivity/{args.analysis}/stage/", {"max_drop": args.max_drop}
        )
    except ApiError as exc:
        print(f"edgeslim sensitivity: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(out, indent=2))
    return 0
