"""Who may do what, declared once: the role sets, the access levels that pages and API views
declare, the page decorator, the DRF permission classes, and the organisation an API call acts
in. Every app takes these from here.

A page declares its access with :func:`org_page` (or :func:`login_page`); an API view with
``permission_classes`` (the project default, ``REST_FRAMEWORK["DEFAULT_PERMISSION_CLASSES"]``,
is :class:`OrgWriter`). Both record the :class:`Access` they enforce, which the role-matrix test
(``tests/webapp/test_role_matrix.py``) checks on every route and ``docs/roles.md`` prints
(``edgeslim manage edgeslim_roles_doc``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ClassVar, TypeVar, cast

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseBase, HttpResponseNotAllowed
from django.shortcuts import render
from rest_framework.exceptions import MethodNotAllowed, NotAuthenticated
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from webapp.accounts.models import Membership, Organization, Role
from webapp.accounts.selectors import membership_current

_View = TypeVar("_View", bound=Callable[..., HttpResponseBase])

# Every role of a member.
MEMBER_ROLES: tuple[str, ...] = (Role.ADMIN, Role.ENGINEER, Role.MANAGER)
# Who may create and change things (upload, start jobs, deploy); managers only read.
WRITE_ROLES: tuple[str, ...] = (Role.ADMIN, Role.ENGINEER)
# Who manages the organisation (members, invitations).
ADMIN_ROLES: tuple[str, ...] = (Role.ADMIN,)

DENIED = "Your role in this organisation does not allow this."


@dataclass(frozen=True)
class Access:
    """Who may use a route.

    ``read``: the roles that may GET (and HEAD, OPTIONS) it; ``write``: the roles that may use
    the other methods, ``None`` when the route takes none (405). ``organization=False``: any
    signed-in user, for their own things (tokens, password); no role is looked at.
    """

    name: str
    read: tuple[str, ...]
    write: tuple[str, ...] | None
    organization: bool = True
    summary: str = ""

    def takes(self, method: str) -> bool:
        """Whether the route answers ``method`` at all (else 405)."""
        return method.upper() in SAFE_METHODS or self.write is not None

    def allows(self, role: str | None, method: str) -> bool:
        """Whether a member with ``role`` (``None``: signed in, no membership) may use
        ``method``."""
        if not self.organization:
            return True
        roles = self.read if method.upper() in SAFE_METHODS else self.write
        return role is not None and roles is not None and role in roles


READ = Access(
    "read", read=MEMBER_ROLES, write=None, summary="every member reads; nothing is changed here"
)
WRITE = Access(
    "write",
    read=MEMBER_ROLES,
    write=WRITE_ROLES,
    summary="every member reads; admins and engineers change (POST, PUT, PATCH, DELETE)",
)
WRITE_ONLY = Access(
    "write only",
    read=WRITE_ROLES,
    write=WRITE_ROLES,
    summary="a page that exists to change something (a form, a wizard): admins and engineers",
)
ADMIN = Access(
    "admin",
    read=MEMBER_ROLES,
    write=ADMIN_ROLES,
    summary="every member reads; only admins change (members, invitations)",
)
SIGNED_IN = Access(
    "signed in",
    read=(),
    write=(),
    organization=False,
    summary="any signed-in user, for their own things; no organisation needed",
)
LEVELS: tuple[Access, ...] = (READ, WRITE, WRITE_ONLY, ADMIN, SIGNED_IN)


def can_write(request: HttpRequest) -> bool:
    """Whether the current membership's role is one of :data:`WRITE_ROLES`."""
    membership: Membership | None = getattr(request, "membership", None)
    return membership is not None and membership.role in WRITE_ROLES


def _role(request: HttpRequest) -> str | None:
    membership: Membership | None = getattr(request, "membership", None)
    return membership.role if membership is not None else None


def org_page(access: Access = READ) -> Callable[[_View], _View]:
    """Declare and enforce a page's access, before the view runs.

    Anonymous: the login page. No organisation: a page that says so (403). A method the access
    does not take: 405. A role it does not allow for the method: 403. The view function carries
    the declaration as ``view.access`` (kept by ``functools.wraps`` through other decorators).
    """

    def decorate(view: _View) -> _View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if access.organization and getattr(request, "organization", None) is None:
                return render(request, "accounts/no_organization.html", status=403)
            if not access.takes(request.method or "GET"):
                return HttpResponseNotAllowed(["GET", "HEAD", "OPTIONS"])
            if not access.allows(_role(request), request.method or "GET"):
                raise PermissionDenied(DENIED)
            return view(request, *args, **kwargs)

        wrapper.access = access  # type: ignore[attr-defined]
        return cast(_View, login_required(wrapper))

    return decorate


def login_page(view: _View) -> _View:
    """A signed-in user's own page (tokens, organisation switcher): :data:`SIGNED_IN`."""
    return org_page(SIGNED_IN)(view)


def api_organization(request: Request) -> Organization:
    """The organisation an API call acts in: the session's, or for a token the user's current
    one (``X-Organization: <id>`` picks another of theirs)."""
    org: Organization | None = getattr(request._request, "organization", None)
    if org is not None:
        return org
    if not request.user or not request.user.is_authenticated:
        raise NotAuthenticated()
    header = request.headers.get("X-Organization", "")
    membership = membership_current(
        user=request.user,
        preferred_org_id=int(header) if header.isdigit() else None,
    )
    if membership is None:
        raise Http404("You belong to no organisation.")
    request._request.organization = membership.organization  # type: ignore[attr-defined]
    request._request.membership = membership  # type: ignore[attr-defined]
    return membership.organization


class OrgAccess(BasePermission):
    """A DRF permission enforcing one :class:`Access` (subclasses set ``access``)."""

    access: ClassVar[Access]
    message = DENIED

    def has_permission(self, request: Request, view: Any) -> bool:
        if self.access.organization:
            api_organization(request)  # 401 anonymous, 404 no organisation
        elif not request.user or not request.user.is_authenticated:
            raise NotAuthenticated()
        method = request.method or "GET"
        if not self.access.takes(method):
            raise MethodNotAllowed(method)
        return self.access.allows(_role(request._request), method)


class OrgMember(OrgAccess):
    """Every member reads; the view takes no other method."""

    access = READ


class OrgWriter(OrgAccess):
    """Every member reads; admins and engineers use the other methods. The project default."""

    access = WRITE


class OrgAdmin(OrgAccess):
    """Every member reads; only admins use the other methods."""

    access = ADMIN


class SignedIn(OrgAccess):
    """Any signed-in user, for their own things; no organisation needed."""

    access = SIGNED_IN


def view_access(view: Any) -> Access | None:
    """The access a URL pattern's callback declares: ``access`` on a page function (or its
    class), or the first :class:`OrgAccess` among an API view's permission classes."""
    found = getattr(view, "access", None)
    cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
    if found is None and cls is not None:
        found = getattr(cls, "access", None)
        for perm in getattr(cls, "permission_classes", ()):
            if isinstance(perm, type) and issubclass(perm, OrgAccess):
                return perm.access
    return found if isinstance(found, Access) else None
