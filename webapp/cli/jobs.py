"""``edgeslim jobs``: submit a recipe to a server and follow it, check a job, download results.

Only the REST API is used (token auth), so this works from any machine::

    edgeslim jobs submit recipe.yaml --server http://host:8000 --token es_... \\
        --model 12 --dataset 3
    edgeslim jobs submit recipe.yaml --upload-model lenet5.safetensors --arch lenet5 \\
        --num-classes 10 --in-channels 1 --upload-dataset digits.zip
    edgeslim jobs submit detect.yaml --upload-dataset shapes-yolo.zip --zoo yolov3_tiny \\
        --zoo-option width=0.25 --zoo-option input_size=64
    edgeslim jobs status 42
    edgeslim jobs download 42 --out results/
    edgeslim jobs sweep prune.yaml --model 12 --dataset 3 \\
        --grid target_mac_reduction=2,4,8,16 --grid importance=l1,bn_scale \\
        --max-accuracy-drop 1 --max-p50-ms 5

``--server`` and ``--token`` default to ``EDGESLIM_SERVER`` and ``EDGESLIM_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class Client:
    """A tiny JSON client for the EdgeSlim API (standard library only)."""

    def __init__(self, server: str, token: str, *, timeout: float = 60.0) -> None:
        self.base = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        url = path if path.startswith("http") else f"{self.base}{path}"
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"Token {self.token}")
        req.add_header("Accept", "application/json")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")[:500]
            raise ApiError(exc.code, parsed) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SystemExit(f"edgeslim jobs: cannot reach {self.base}: {reason}") from None

    def get(self, path: str) -> Any:
        return json.loads(self._request("GET", path)[1])

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        body = json.dumps(data or {}).encode()
        return json.loads(self._request("POST", path, body, "application/json")[1])

    def upload(self, path: str, file: Path, fields: dict[str, Any]) -> Any:
        """A multipart POST of ``file`` plus ``fields`` (small files; the web page and the
        ``/uploads/`` API resume large ones)."""
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for key, value in fields.items():
            if value is None:
                continue
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
            )
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        parts.append(file.read_bytes())
        parts.append(f"\r\n--{boundary}--\r\n".encode())
        _status, raw, _ = self._request(
            "POST", path, b"".join(parts), f"multipart/form-data; boundary={boundary}"
        )
        return json.loads(raw)

    def download(self, path: str, target: Path) -> int:
        _status, raw, _ = self._request("GET", path)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(raw)
        tmp.replace(target)
        return len(raw)


def _zoo_options(pairs: list[str]) -> dict[str, str] | None:
    """``["width=0.25", "input_size=64"]`` as a mapping (the server checks names and values);
    None when a pair has no ``=``."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            return None
        out[name.strip()] = value.strip()
    return out


def _print_refusal(err: Any, exc: ApiError) -> None:
    """The server's refusal of a submission, with the field it names."""
    field = exc.body.get("field") if isinstance(exc.body, dict) else None
    err.print(f"[red]refused: {exc}[/red]" + (f" (field: {field})" if field else ""))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="submit and follow compression jobs on an EdgeSlim server")

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 0

    p.set_defaults(func=usage)
    jobs = p.add_subparsers(dest="jobs_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--server", default=os.environ.get("EDGESLIM_SERVER", "http://127.0.0.1:8000")
        )
        q.add_argument(
            "--token",
            default=os.environ.get("EDGESLIM_TOKEN", ""),
            help="an API token (or EDGESLIM_TOKEN)",
        )

    s = jobs.add_parser("submit", help="validate and queue a recipe, then follow it live")
    s.add_argument("recipe", type=Path, help="recipe file (YAML or JSON)")
    common(s)
    s.add_argument("--model", type=int, help="id of a ready model version")
    s.add_argument("--dataset", type=int, help="id of a ready dataset")
    s.add_argument("--upload-model", type=Path, help="upload this model file first")
    s.add_argument("--arch", help="zoo architecture of an uploaded state dict (e.g. lenet5)")
    s.add_argument("--num-classes", type=int)
    s.add_argument("--in-channels", type=int)
    s.add_argument("--input-size", type=int)
    s.add_argument(
        "--upload-dataset",
        type=Path,
        help="upload this data set zip first (image folders; or YOLO, Pascal VOC or COCO for "
        "detection, found from the layout)",
    )
    s.add_argument(
        "--zoo",
        metavar="ARCH",
        help="instead of --model: a new, untrained model of this zoo architecture (e.g. "
        "yolov3_tiny) sized for the data set's classes; start the recipe with a finetune stage",
    )
    s.add_argument(
        "--zoo-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option of the --zoo architecture, e.g. width=0.25 or input_size=64 (repeat)",
    )
    s.add_argument("--name", default="", help="job name (default: the recipe's)")
    s.add_argument("--queue", choices=["auto", "cpu", "gpu"], default="auto")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return")
    s.add_argument("--download", type=Path, help="when it succeeds, download the results here")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=submit)

    st = jobs.add_parser("status", help="a job's status")
    st.add_argument("job", type=int)
    common(st)
    st.set_defaults(func=status)

    sw = jobs.add_parser(
        "sweep", help="run one recipe over a grid of up to two parameters, sharing the baseline"
    )
    sw.add_argument("recipe", type=Path, help="the base recipe file (YAML or JSON)")
    common(sw)
    sw.add_argument("--model", type=int, required=True, help="id of a ready model version")
    sw.add_argument("--dataset", type=int, required=True, help="id of a ready dataset")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="PARAM=V1,V2,...",
        help="a swept stage parameter and its values (repeat once for a second one); a "
        "parameter two stages share is named STAGE.PARAM, e.g. 1.lr=0.01,0.001",
    )
    sw.add_argument("--name", default="")
    sw.add_argument("--queue", choices=["auto", "cpu", "gpu"], default="auto")
    sw.add_argument("--max-accuracy-drop", type=float, help="recommend within this drop (pt)")
    sw.add_argument("--device", default="", help="device name the latency limit is on")
    sw.add_argument("--max-p50-ms", type=float, help="recommend within this p50 (ms)")
    sw.add_argument("--prefer", choices=["latency", "accuracy", "size"], default=None)
    sw.add_argument("--no-wait", action="store_true", help="print the sweep id and return")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=sweep)

    d = jobs.add_parser("download", help="download a job's ONNX files, report and recipe")
    d.add_argument("job", type=int)
    common(d)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--checkpoints", action="store_true", help="also the stage checkpoints")
    d.set_defaults(func=download)


def _client(args: argparse.Namespace) -> Client:
    if not args.token:
        raise SystemExit(
            "edgeslim jobs: give --token or set EDGESLIM_TOKEN (create one with "
            "POST /api/v1/auth/token/ or on the organisation settings page)"
        )
    return Client(args.server, args.token)


def _wait_ready(client: Client, url: str, what: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        item: dict[str, Any] = client.get(url)
        if item.get("status") == "ready":
            return item
        if item.get("status") == "invalid":
            raise SystemExit(f"edgeslim jobs: the {what} was refused: {item.get('error')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"edgeslim jobs: the {what} was not ready in {timeout_s:.0f} s")
        time.sleep(0.5)


def submit(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True)
    client = _client(args)
    try:
        text = args.recipe.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]cannot read {args.recipe}: {exc}[/red]")
        return EXIT_BAD_INPUT
    try:
        model_id, dataset_id = args.model, args.dataset
        if args.upload_model:
            mv = client.upload(
                "/api/v1/models/",
                args.upload_model,
                {
                    "name": args.upload_model.stem,
                    "arch": args.arch,
                    "num_classes": args.num_classes,
                    "in_channels": args.in_channels,
                    "input_size": args.input_size,
                },
            )
            err.print(f"uploaded model → version {mv['id']}; inspecting…")
            model_id = _wait_ready(client, f"/api/v1/models/{mv['id']}/", "model")["id"]
        if args.upload_dataset:
            ds = client.upload(
                "/api/v1/datasets/", args.upload_dataset, {"name": args.upload_dataset.stem}
            )
            err.print(f"uploaded dataset → {ds['id']}; validating…")
            dataset_id = _wait_ready(client, f"/api/v1/datasets/{ds['id']}/", "dataset")["id"]
        if args.zoo:
            if model_id is not None or args.upload_model:
                err.print("[red]give one of --model, --upload-model and --zoo[/red]")
                return EXIT_BAD_INPUT
            if dataset_id is None:
                err.print(
                    "[red]--zoo sizes the model for a data set: give --dataset or --upload-dataset[/red]"
                )
                return EXIT_BAD_INPUT
            options = _zoo_options(args.zoo_option)
            if options is None:
                err.print("[red]--zoo-option takes NAME=VALUE, e.g. width=0.25[/red]")
                return EXIT_BAD_INPUT
            mv = client.post(
                "/api/v1/models/from-zoo/",
                {"arch": args.zoo, "dataset": dataset_id, "options": options},
            )
            err.print(f"new {mv['arch']} from the zoo → version {mv['id']} (untrained)")
            model_id = mv["id"]
        if model_id is None or dataset_id is None:
            err.print(
                "[red]give --model and --dataset (ids), or upload them with --upload-model / --upload-dataset[/red]"
            )
            return EXIT_BAD_INPUT
        job = client.post(
            "/api/v1/jobs/",
            {
                "model_version": model_id,
                "dataset": dataset_id,
                "recipe": text,
                "name": args.name,
                "queue": args.queue,
            },
        )
    except ApiError as exc:
        _print_refusal(err, exc)
        return EXIT_BAD_INPUT
    print(job["id"])
    if args.no_wait:
        return 0
    final = follow(client, job["id"], quiet=args.quiet, console=err)
    if final["status"] != "SUCCEEDED":
        err.print(
            f"[red]job {job['id']} {final['status']}: {final.get('error') or final.get('message')}[/red]"
        )
        return EXIT_FAILED
    err.print(
        f"[green]job {job['id']} succeeded[/green] · {args.server.rstrip('/')}{final['report_url']}"
    )
    if args.download:
        _download_all(client, job["id"], args.download, checkpoints=False, console=err)
    return 0


def follow(
    client: Client, job_id: int, *, quiet: bool = False, console: Any = None, poll_s: float = 0.5
) -> dict[str, Any]:
    """Poll the job and its events until it ends, drawing a progress bar and the log lines."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    after = 0
    with Progress(
        TextColumn("[bold]job {task.fields[job]}[/bold] {task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task("queued", total=1.0, job=job_id, status="QUEUED")
        while True:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}/")
            for ev in client.get(f"/api/v1/jobs/{job_id}/events/?after={after}"):
                after = max(after, int(ev["seq"]))
                if ev["kind"] == "log" and not quiet:
                    bar.console.print(
                        f"  {ev['payload'].get('line', '')}", markup=False, highlight=False
                    )
            bar.update(
                task,
                completed=job["progress"],
                description=job["message"][:60],
                status=job["status"],
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(poll_s)


def status(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        job = client.get(f"/api/v1/jobs/{args.job}/")
    except ApiError as exc:
        print(f"edgeslim jobs: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"job {job['id']} {job['status']} {job['progress'] * 100:.0f}% "
        f"({job['completed_stages']}/{job['stage_count']} stages) {job['message']}"
    )
    if job.get("error"):
        print(f"error: {job['error']}")
    return 0 if job["status"] != "FAILED" else EXIT_FAILED


def _download_all(
    client: Client, job_id: int, out: Path, *, checkpoints: bool, console: Any
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for item in client.get(f"/api/v1/jobs/{job_id}/artifacts/"):
        if item["key"].startswith("checkpoint:") and not checkpoints:
            continue
        target = out / Path(item["filename"]).name
        size = client.download(item["url"], target)
        console.print(f"  {target} ({size} bytes)")
        written.append(target)
    return written


def download(args: argparse.Namespace) -> int:
    from rich.console import Console

    client = _client(args)
    try:
        _download_all(
            client, args.job, args.out, checkpoints=args.checkpoints, console=Console(stderr=True)
        )
    except ApiError as exc:
        print(f"edgeslim jobs: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def parse_grid_args(items: list[str]) -> dict[str, list[Any]]:
    """``["importance=l1,bn_scale", "ratio=0.25,0.5"]`` to a grid; each value read as YAML
    (``4`` an int, ``0.5`` a float, ``true`` a bool, anything else text).

    Raises:
        ValueError: an item without ``=`` or without values.
    """
    import yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--grid {item!r}: write PARAM=V1,V2,...")
        values = [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--grid {item!r}: give at least one value")
        grid[key.strip()] = values
    return grid


def sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    client = _client(args)
    try:
        text = args.recipe.read_text(encoding="utf-8")
        grid = parse_grid_args(args.grid)
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]cannot read {args.recipe}: {exc}[/red]")
        return EXIT_BAD_INPUT
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        return EXIT_BAD_INPUT
    constraints = {
        k: v
        for k, v in (
            ("max_accuracy_drop", args.max_accuracy_drop),
            ("device", args.device),
            ("max_p50_ms", args.max_p50_ms),
            ("prefer", args.prefer),
        )
        if v not in (None, "")
    }
    try:
        created = client.post(
            "/api/v1/sweeps/",
            {
                "model_version": args.model,
                "dataset": args.dataset,
                "recipe": text,
                "grid": grid,
                "constraints": constraints,
                "name": args.name,
                "queue": args.queue,
            },
        )
    except ApiError as exc:
        _print_refusal(err, exc)
        return EXIT_BAD_INPUT
    print(created["id"])
    if args.no_wait:
        return 0
    final = follow_sweep(client, created["id"], quiet=args.quiet, console=err)
    results = client.get(f"/api/v1/sweeps/{created['id']}/results/")
    for point in results["points"]:
        acc = "—" if point["accuracy"] is None else f"{point['accuracy']:.2f} %"
        drop = "—" if point["accuracy_drop"] is None else f"{point['accuracy_drop']:+.2f} pt"
        p50 = "—" if point["host_p50_ms"] is None else f"{point['host_p50_ms']:.3f} ms"
        err.print(
            f"  {point['label']}: {point['status']} · accuracy {acc} (drop {drop}) · host p50 {p50}",
            markup=False,
            highlight=False,
        )
    rec = results["recommendation"]
    err.print(f"recommended under {rec['constraints']}: {rec['summary']}", markup=False)
    page = f"{args.server.rstrip('/')}{final['page_url']}"
    if final["state"]["status"] != "SUCCEEDED":
        err.print(f"[red]sweep {created['id']} {final['state']['status']}[/red] · {page}")
        return EXIT_FAILED
    err.print(f"[green]sweep {created['id']} finished[/green] · {page}")
    return 0


def follow_sweep(
    client: Client, sweep_id: int, *, quiet: bool = False, console: Any = None, poll_s: float = 1.0
) -> dict[str, Any]:
    """Poll the sweep until every child has ended, drawing one bar over the baseline and the
    children and printing each child as it ends."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    reported: set[int] = set()
    with Progress(
        TextColumn("[bold]sweep {task.fields[sweep]}[/bold] {task.fields[status]}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task("queued", total=1.0, sweep=sweep_id, status="QUEUED")
        while True:
            item: dict[str, Any] = client.get(f"/api/v1/sweeps/{sweep_id}/")
            state = item["state"]
            for child in item["children"]:
                if child["status"] in TERMINAL and child["id"] not in reported:
                    reported.add(child["id"])
                    if not quiet:
                        values = ", ".join(f"{k}={v}" for k, v in (child["values"] or {}).items())
                        bar.console.print(
                            f"  job {child['id']} [{values}] {child['status']}"
                            + (f": {child['error']}" if child["error"] else ""),
                            markup=False,
                            highlight=False,
                        )
            done = sum(state["counts"][k] for k in ("succeeded", "failed", "cancelled"))
            bar.update(
                task,
                completed=state["progress"],
                description=f"{done}/{state['total']} points · baseline {state['baseline_status']}",
                status=state["status"],
            )
            if state["status"] in TERMINAL:
                return item
            time.sleep(poll_s)
