"""A model's family tree: every version descended from the root of a version's lineage, the job
and recipe that made each, its parent and its results on devices; laid out as a tree for the
page's SVG graph.

Read in four queries whatever the size of the family: the organisation's lineage edges, the
family's versions, the jobs that produced them, and their device results.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404

from webapp.accounts.models import Organization
from webapp.catalog.models import ModelVersion
from webapp.jobs.models import Job
from webapp.reports.comparison import _device_measures

# A family larger than this is refused rather than drawn (a clear 400, not a slow page).
MAX_LINEAGE_VERSIONS = 500

# The SVG layout, in pixels.
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 190, 64, 24, 48, 16


class LineageTooLarge(ValueError):
    """The family has more versions than a page draws."""


def _family(*, organization: Organization, version_id: Any) -> tuple[int, dict[int, list[int]]]:
    """The root of ``version_id``'s lineage and the children of every version, from one query
    over the organisation's (id, parent) edges."""
    try:
        focus = int(version_id)
    except (TypeError, ValueError) as exc:
        raise Http404("No such model version.") from exc
    parents = dict(
        ModelVersion.objects.for_org(organization).values_list("id", "parent_id").order_by("id")
    )
    if focus not in parents:
        raise Http404("No such model version.")
    root, seen = focus, {focus}
    while parents.get(root) is not None and parents[root] not in seen:
        root = parents[root]
        seen.add(root)
    children: dict[int, list[int]] = {}
    for pk, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(pk)
    return root, children


def _recipe_summary(recipe: Any) -> dict[str, Any] | None:
    if not isinstance(recipe, dict):
        return None
    value = recipe.get("stages")
    stages: list[Any] = value if isinstance(value, list) else []
    methods = [str(s.get("method", "?")) for s in stages if isinstance(s, dict)]
    return {"name": str(recipe.get("name") or ""), "methods": methods}


def _layout(root: int, children: dict[int, list[int]]) -> tuple[dict[int, tuple[float, int]], int]:
    """(x slot, depth) of every node of the tree under ``root``: leaves take the next free slot
    left to right, a parent sits over the middle of its children. Iterative (no recursion
    limit) and safe against cycles. Returns the positions and the number of slots."""
    pos: dict[int, tuple[float, int]] = {}
    next_slot = 0
    stack: list[tuple[int, int, bool]] = [(root, 0, False)]
    visiting: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        kids = [c for c in children.get(node, []) if c not in visiting and c not in pos]
        if not done:
            visiting.add(node)
            stack.append((node, depth, True))
            for child in reversed(kids):
                stack.append((child, depth + 1, False))
            continue
        placed = [pos[c][0] for c in children.get(node, []) if c in pos and pos[c][1] == depth + 1]
        if placed:
            pos[node] = ((min(placed) + max(placed)) / 2, depth)
        else:
            pos[node] = (float(next_slot), depth)
            next_slot += 1
    return pos, max(next_slot, 1)


def lineage_build(*, organization: Organization, version_id: Any) -> dict[str, Any]:
    """The family of ``version_id``: its root and every version derived from the root.

    Raises:
        Http404: no version of ``organization`` with that id.
        LineageTooLarge: more than :data:`MAX_LINEAGE_VERSIONS` versions in the family.
    """
    root, children = _family(organization=organization, version_id=version_id)
    pos, slots = _layout(root, children)
    if len(pos) > MAX_LINEAGE_VERSIONS:
        raise LineageTooLarge(
            f"This family has {len(pos)} versions; the lineage shows at most "
            f"{MAX_LINEAGE_VERSIONS}; each version's page still lists its parent and children."
        )
    versions = {
        v.pk: v
        for v in ModelVersion.objects.for_org(organization)
        .filter(pk__in=list(pos))
        .select_related("asset")
        .only(
            "id",
            "number",
            "label",
            "format",
            "status",
            "parent_id",
            "produced_by_job_id",
            "recipe",
            "size_bytes",
            "created_at",
            "task",
            "asset__name",
        )
    }
    job_ids = {v.produced_by_job_id for v in versions.values() if v.produced_by_job_id}
    jobs = {
        j.pk: j
        for j in Job.objects.for_org(organization)
        .filter(pk__in=list(job_ids))
        .only("id", "name", "status", "recipe", "model_version_id")
    }
    devices, measures = _device_measures(organization=organization, version_ids=list(versions))
    depth = max((d for _, d in pos.values()), default=0)
    nodes = []
    for pk, (slot, level) in sorted(pos.items(), key=lambda kv: (kv[1][1], kv[1][0])):
        v = versions[pk]
        job = jobs.get(v.produced_by_job_id or 0)
        on_devices = []
        for device_id, name in devices.items():
            m = measures.get((pk, device_id))
            if m is not None:
                on_devices.append(
                    {
                        "id": device_id,
                        "name": name,
                        "p50_ms": m.p50_ms,
                        "p90_ms": m.p90_ms,
                        "top1_pct": m.top1_pct,
                        "map50_pct": m.map50_pct,  # a detector's mAP@0.5, percent
                    }
                )
        nodes.append(
            {
                "id": pk,
                "title": f"{v.asset.name} v{v.number}" + (f" {v.label}" if v.label else ""),
                "name": v.asset.name,
                "number": v.number,
                "label": v.label,
                "format": v.format,
                "status": v.status,
                "task": v.task,
                "parent": v.parent_id if v.parent_id in pos else None,
                "children": sorted(c for c in children.get(pk, []) if c in pos),
                "depth": level,
                "size_bytes": v.size_bytes or None,
                "created_at": v.created_at.isoformat(),
                "job": (
                    {"id": job.pk, "name": job.name, "status": job.status}
                    if job is not None
                    else None
                ),
                "recipe": _recipe_summary(v.recipe if v.recipe else (job.recipe if job else None)),
                "devices": on_devices,
                # where the page's SVG draws it (top left corner, pixels)
                "x": round(PAD + slot * (NODE_W + GAP_X)),
                "y": PAD + level * (NODE_H + GAP_Y),
            }
        )
    focus = int(version_id)
    return {
        "root": root,
        "focus": focus,
        "devices": [{"id": i, "name": n} for i, n in devices.items()],
        "versions": nodes,
        "width": 2 * PAD + slots * NODE_W + (slots - 1) * GAP_X,
        "height": 2 * PAD + (depth + 1) * NODE_H + depth * GAP_Y,
    }


def lineage_edges(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """The SVG's edges: from the bottom middle of each parent to the top middle of its child."""
    at = {n["id"]: n for n in lineage["versions"]}
    edges = []
    for n in lineage["versions"]:
        parent = at.get(n["parent"]) if n["parent"] is not None else None
        if parent is None:
            continue
        x1, y1 = parent["x"] + NODE_W / 2, parent["y"] + NODE_H
        x2, y2 = n["x"] + NODE_W / 2, n["y"]
        mid = (y1 + y2) / 2
        edges.append({"child": n["id"], "d": f"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}"})
    return edges


LINEAGE_CSV_FIELDS = ("id", "title", "name", "number", "label", "format", "status", "task",
                      "parent", "depth", "job", "job_name", "recipe", "methods", "size_bytes",
                      "created_at")  # fmt: skip


def lineage_csv_rows(lineage: dict[str, Any]) -> list[list[Any]]:
    """The CSV export: one row per version; then per device ``device:<id>:<name>:p50_ms``,
    ``...:p90_ms``, ``...:top1_pct`` and ``...:map50_pct`` (a detector's mAP@0.5, percent)."""
    device_cols = [
        (d["id"], f"device:{d['id']}:{d['name']}:{key}", key)
        for d in lineage["devices"]
        for key in ("p50_ms", "p90_ms", "top1_pct", "map50_pct")
    ]
    out: list[list[Any]] = [[*LINEAGE_CSV_FIELDS, *(name for _, name, _ in device_cols)]]
    for n in lineage["versions"]:
        recipe = n["recipe"] or {}
        flat = {
            **{k: n[k] for k in LINEAGE_CSV_FIELDS if k in n and k != "job"},
            "job": n["job"]["id"] if n["job"] else None,
            "job_name": n["job"]["name"] if n["job"] else "",
            "recipe": recipe.get("name", ""),
            "methods": " > ".join(recipe.get("methods", [])),
        }
        on = {d["id"]: d for d in n["devices"]}
        row = ["" if flat.get(k) is None else flat.get(k) for k in LINEAGE_CSV_FIELDS]
        for device_id, _, key in device_cols:
            value = on.get(device_id, {}).get(key)
            row.append("" if value is None else value)
        out.append(row)
    return out
