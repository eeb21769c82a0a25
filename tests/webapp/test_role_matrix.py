"""The role matrix: every route of the project, asked by an admin, an engineer, a manager,
another organisation's admin and an anonymous visitor, answers as the route declares.

The routes are read from the URLconf itself (``webapp.accounts.roles_doc.routes``), so a new
page or endpoint is picked up by itself: it must declare its access (``org_page`` on a page,
``permission_classes`` or the project default on an API view) or be listed, with a reason, in
``NO_ROLE_ROUTES``. URL arguments are filled from the first organisation's objects, found by the
path segment before them (``devices/<pk>`` is its device). Each request runs in a savepoint that
is rolled back, so an admin's POST never changes what the next request sees.

Expected, for each route and each method it takes (GET, and the write methods it declares):
- anonymous: the login page (pages), 401 or 403 (API);
- another organisation's admin on a route naming an object: 404, never the object;
- a member whose role the declaration allows: neither 401, 403 nor 404, and never a 5xx;
  reads that only read answer 200;
- a member whose role it does not allow (a manager writing, an engineer managing members): 403.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from factories import client_for, make_member, make_organization, make_user
from jobs_factories import make_digits, make_model_version

from device_registry.models import Device
from webapp.accounts import services as account_services
from webapp.accounts.models import Membership, Organization, Role, User
from webapp.accounts.permissions import SIGNED_IN
from webapp.accounts.roles_doc import NO_ROLE_ROUTES, Route, routes, undeclared
from webapp.catalog.models import Upload, UploadKind
from webapp.jobs.models import Job, JobStatus, Sweep, SweepBaseline
from webapp.sensitivity.models import SensitivityAnalysis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "device_registry"))
from device_factories import artifact, deployment, enrolled_device

WHO = ("anonymous", "other_admin", "manager", "engineer", "admin")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32

ALL_ROUTES = routes()
CHECKED = [r for r in ALL_ROUTES if r.access is not None]


@dataclass
class World:
    """The first organisation with one of everything, its members, and another organisation."""

    org: Organization
    users: dict[str, User]
    objects: dict[str, Any]
    clients: dict[str, Client] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    user_tokens: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Made once for the module inside a transaction that is rolled back at its end; each test
    runs in a savepoint within it (pytest-django's), and each request in one of its own."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            yield _make_world(tmp_path_factory.mktemp("role-matrix"))
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _make_world(tmp_path: Path) -> World:
    admin = make_user()
    org = make_organization(owner=admin)
    users = {
        "admin": admin,
        "engineer": make_member(org, role=Role.ENGINEER),
        "manager": make_member(org, role=Role.MANAGER),
    }
    other_admin = make_user()
    make_organization(owner=other_admin)
    users["other_admin"] = other_admin
    victim = make_member(org, role=Role.ENGINEER)

    version = make_model_version(org, user=admin)
    dataset = make_digits(org)
    thumb = default_storage.save(f"catalog/{org.pk}/thumbs/{dataset.pk}/0.png", ContentFile(PNG))
    dataset.report = {**dataset.report, "classes": ["zero"], "thumbnails": {"zero": [thumb]}}
    dataset.save(update_fields=["report"])
    recipe = {"name": "r", "seed": 0, "stages": [{"method": "finetune", "config": {"epochs": 1}}]}
    final = {"accuracy": 97.0, "params": 100, "macs": 500, "onnx_bytes": 400, "latency": None}
    job = Job.objects.create(
        organization=org, name="job", model_version=version, dataset=dataset, recipe=recipe,
        status=JobStatus.SUCCEEDED, created_by=admin,
        report={"recipe": recipe, "dataset": {"name": dataset.name, "split_seed": 0},
                "baseline": final, "stages": [{"index": 0, "metrics": final}], "final": final},
    )  # fmt: skip
    device, _ = enrolled_device(org)
    art = artifact(org, tmp_path)
    dep = deployment(org, art, device)
    sweep = Sweep.objects.create(
        organization=org, name="sweep", model_version=version, dataset=dataset, recipe=recipe,
        grid=[{"stage": 0, "method": "finetune", "param": "epochs", "values": [1, 2]}],
        baseline_status=SweepBaseline.DONE, constraints={}, created_by=admin,
    )  # fmt: skip
    analysis = SensitivityAnalysis.objects.create(
        organization=org, model_version=version, dataset=dataset, ratios=[0.25, 0.5],
        created_by=admin,
    )  # fmt: skip
    upload = Upload.objects.create(
        organization=org, user=users["engineer"], kind=UploadKind.MODEL, filename="m.onnx",
        total_size=10, expires_at=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    invitation, _ = account_services.invitation_create(
        organization=org, email="new@example.com", role=Role.ENGINEER, invited_by=admin
    )
    w = World(
        org=org,
        users=users,
        objects={
            "models": version, "versions": version, "model-version": version,
            "datasets": dataset, "jobs": job, "devices": device, "deployments": dep,
            "sweeps": sweep, "sensitivity": analysis, "uploads": upload,
            "members": Membership.objects.get(organization=org, user=victim),
            "invitations": invitation,
        },
    )  # fmt: skip
    for who, user in users.items():
        token, key = account_services.api_token_create(user=user, name=f"{who} matrix")
        w.tokens[who] = key
        w.clients[who] = client_for(user)
        w.user_tokens[who] = token.pk
    return w


# --- filling URL arguments ----------------------------------------------------------------------

_ARG = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>")
_CONSTANTS = {"class_index": 0, "n": 0, "fmt": "csv", "key": "recipe", "step": "pick"}
# Reads that answer 400 without a query: what they are asked with.
_QUERIES = {"reports:compare_export": "job", "api:reports-compare": "job"}


def url_kwargs(route: Route, world: World, who: str) -> tuple[dict[str, Any], bool]:
    """The route's URL arguments from the first organisation's objects, and whether it names an
    object. A user's own token is theirs (another organisation's admin gets the admin's)."""
    kwargs: dict[str, Any] = {}
    names_object = False
    for match in _ARG.finditer(route.path):
        name = match.group(1) or match.group(2)
        if name in _CONSTANTS:
            kwargs[name] = _CONSTANTS[name]
            continue
        segment = route.path[: match.start()].rstrip("/").rsplit("/", 1)[-1].lstrip("^")
        if segment == "tokens":
            owner = "admin" if who in ("other_admin", "anonymous") else who
            kwargs[name] = world.user_tokens[owner]
        elif segment in world.objects:
            kwargs[name] = world.objects[segment].pk
        else:
            raise AssertionError(
                f"{route.name} (/{route.path}): the role matrix does not know what fills "
                f"<{name}> after '{segment}/'; add it to the world fixture's objects"
            )
        names_object = True
    return kwargs, names_object


# --- asking -------------------------------------------------------------------------------------


def _methods(route: Route) -> list[str]:
    """GET, and every write method the route takes when its access declares writes."""
    assert route.access is not None
    writes = [m for m in route.methods if m != "GET"] if route.access.write is not None else []
    return ["GET", *writes]


def _ask(route: Route, world: World, who: str, method: str) -> tuple[int, str]:
    kwargs, _ = url_kwargs(route, world, who)
    url = reverse(route.name, kwargs=kwargs)
    if route.name in _QUERIES:
        url += f"?{_QUERIES[route.name]}={world.objects['jobs'].pk}"
    extra: dict[str, Any] = {}
    if who == "anonymous":
        client = Client()
    elif route.is_api:
        client = Client()
        extra["HTTP_AUTHORIZATION"] = f"Token {world.tokens[who]}"
    else:
        client = world.clients[who]
    with transaction.atomic():
        if method == "GET":
            response = client.get(url, **extra)
        else:
            body = "{}" if route.is_api else ""
            content_type = (
                "application/json" if route.is_api else "application/x-www-form-urlencoded"
            )
            response = client.generic(method, url, body, content_type=content_type, **extra)
        transaction.set_rollback(True)
    return response.status_code, response.get("Location", "")


def _problems(route: Route, world: World) -> list[str]:
    access = route.access
    assert access is not None
    _, names_object = url_kwargs(route, world, "admin")
    problems: list[str] = []
    for method in _methods(route):
        for who in WHO:
            status, location = _ask(route, world, who, method)
            said = f"{method} /{route.path} as {who}: {status}"
            if status >= 500:
                problems.append(f"{said} (a server error)")
            elif who == "anonymous":
                if route.is_api and status not in (401, 403):
                    problems.append(f"{said}, expected 401 or 403")
                if not route.is_api and not (
                    status == 302 and location.startswith(reverse("accounts:login"))
                ):
                    problems.append(f"{said}, expected a redirect to the login page")
            elif who == "other_admin":
                # 405: the route takes no such method at all, whoever asks and whatever the id.
                if names_object and status not in (404, 405):
                    problems.append(f"{said}, expected 404 (another organisation's object)")
            else:
                role = None if access is SIGNED_IN else world_role(who)
                if access.allows(role, method):
                    if status in (401, 403, 404):
                        problems.append(f"{said}, but `{access.name}` allows {who}")
                    elif who == "manager" and method == "GET" and status not in (200, 405):
                        problems.append(
                            f"{said}, expected 200 (a read; 405 where GET is not taken)"
                        )
                elif status != 403:
                    problems.append(f"{said}, expected 403 (`{access.name}` refuses {who})")
    return problems


def world_role(who: str) -> str:
    return {"admin": Role.ADMIN, "engineer": Role.ENGINEER, "manager": Role.MANAGER}[who]


# --- the tests ----------------------------------------------------------------------------------


def test_every_route_declares_its_access_or_why_no_role_applies() -> None:
    missing = [f"{r.name} (/{r.path})" for r in undeclared()]
    assert not missing, (
        "These routes declare no access: decorate the page with org_page(...) / login_page, or "
        "give the API view permission_classes from webapp.accounts.permissions, or list it in "
        "webapp.accounts.roles_doc.NO_ROLE_ROUTES with the reason: " + ", ".join(missing)
    )
    names = {r.name for r in ALL_ROUTES} | {
        r.name.split(":", 1)[0] + ":*" for r in ALL_ROUTES if ":" in r.name
    }
    stale = [key for key in NO_ROLE_ROUTES if key not in names]
    assert not stale, f"NO_ROLE_ROUTES names routes that no longer exist: {stale}"


def test_the_matrix_covers_pages_and_the_api() -> None:
    assert sum(r.is_api for r in CHECKED) >= 30 and sum(not r.is_api for r in CHECKED) >= 50
    # The device registry's writes are declared as writes, pages and API alike.
    writes = {r.name for r in CHECKED if r.access is not None and r.access.write is not None}
    for name in ("devices:register", "devices:new_code", "devices:revoke", "devices:artifacts",
                 "devices:deploy", "devices:deploy_model_version", "devices:deployment_cancel",
                 "api_devices", "api_device_revoke", "api_deployments", "api_deployment_cancel"):  # fmt: skip
        assert name in writes, name


@pytest.mark.django_db
@pytest.mark.parametrize("route", CHECKED, ids=[f"{r.name}:{r.path}" for r in CHECKED])
def test_route_answers_each_role_as_declared(route: Route, world: World) -> None:
    problems = _problems(route, world)
    assert not problems, "\n".join(problems)


@pytest.mark.django_db
def test_the_device_api_acts_in_the_organisation_named_by_x_organization(world: World) -> None:
    """A manager of the first organisation who is the other one's admin: X-Organization picks
    where a token call acts, and the role there decides."""
    user = world.users["other_admin"]
    account_services.membership_add(organization=world.org, user=user, role=Role.MANAGER)
    own = Membership.objects.exclude(organization=world.org).get(user=user).organization
    client = Client(HTTP_AUTHORIZATION=f"Token {world.tokens['other_admin']}")
    body = {"name": "bench-pi"}

    refused = client.post(
        "/api/v1/devices/", body, content_type="application/json",
        HTTP_X_ORGANIZATION=str(world.org.pk),
    )  # fmt: skip
    assert refused.status_code == 403
    listed = client.get("/api/v1/devices/", HTTP_X_ORGANIZATION=str(world.org.pk))
    assert listed.status_code == 200
    assert [d["id"] for d in listed.json()] == [world.objects["devices"].pk]
    device_url = f"/api/v1/devices/{world.objects['devices'].pk}/"
    assert client.get(device_url, HTTP_X_ORGANIZATION=str(world.org.pk)).status_code == 200
    assert client.get(device_url, HTTP_X_ORGANIZATION=str(own.pk)).status_code == 404

    made = client.post(
        "/api/v1/devices/", body, content_type="application/json",
        HTTP_X_ORGANIZATION=str(own.pk),
    )  # fmt: skip
    assert made.status_code == 201, made.content
    assert Device.objects.get(pk=made.json()["device"]["id"]).organization == own
    assert not Device.objects.filter(organization=world.org, name="bench-pi").exists()


def test_docs_roles_page_holds_exactly_the_generated_table() -> None:
    from webapp.accounts.roles_doc import END, START, roles_markdown

    page = (Path(__file__).resolve().parents[2] / "docs" / "roles.md").read_text()
    start = page.index(START)
    end = page.index(END) + len(END)
    assert page[start:end] + "\n" == roles_markdown(), (
        "docs/roles.md is not current: run `edgeslim manage edgeslim_roles_doc`"
    )
