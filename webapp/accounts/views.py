"""Login, the organisation switcher and the organisation's members page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from webapp.accounts import selectors, services
from webapp.accounts.forms import MemberAddForm, OrganizationSwitchForm, RoleChangeForm
from webapp.accounts.middleware import SESSION_ORG_KEY
from webapp.accounts.models import Membership, Role, User
from webapp.accounts.permissions import org_required, require_role
from webapp.accounts.throttling import (
    THROTTLED_MESSAGE,
    login_failure_record,
    login_is_throttled,
    login_success_record,
)


class LoginView(auth_views.LoginView):
    """Django's login view with failed-attempt throttling (429 once over the limit)."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        if login_is_throttled(request, username):
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, THROTTLED_MESSAGE)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        login_failure_record(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        login_success_record(self.request, self.request.POST.get("username", ""))
        return super().form_valid(form)


class LogoutView(auth_views.LogoutView):
    pass


def _back(request: HttpRequest, fallback: str = "home") -> HttpResponseRedirect:
    target = request.POST.get("next") or request.headers.get("referer") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return redirect(fallback)


@login_required
@require_POST
def organization_switch(request: HttpRequest) -> HttpResponse:
    form = OrganizationSwitchForm(request.POST)
    if form.is_valid():
        membership = selectors.membership_get(
            user=request.user,  # type: ignore[arg-type]
            organization_id=form.cleaned_data["organization"],
        )
        if membership is not None:
            request.session[SESSION_ORG_KEY] = membership.organization_id
            messages.info(request, f"Now working in {membership.organization.name}.")
            return redirect("home")
    messages.error(request, "You are not a member of that organisation.")
    return _back(request)


@org_required
def organization_settings(request: HttpRequest) -> HttpResponse:
    membership = require_role(request)
    org = membership.organization
    return render(
        request,
        "accounts/organization_settings.html",
        {
            "members": selectors.membership_list_for_org(organization=org),
            "add_form": MemberAddForm(),
            "roles": Role.choices,
            "can_manage": membership.is_admin,
        },
    )


@org_required
@require_POST
def member_add(request: HttpRequest) -> HttpResponse:
    org = require_role(request, Role.ADMIN).organization
    form = MemberAddForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, str(error))
        return redirect("accounts:organization_settings")
    data = form.cleaned_data
    try:
        user = User.objects.filter(username__iexact=data["username"]).first()
        if user is not None:
            services.membership_add(organization=org, user=user, role=data["role"])
        elif data["email"] and data["password"]:
            user = services.user_create(
                username=data["username"],
                email=data["email"],
                password=data["password"],
                organization=org,
                role=data["role"],
            )
        else:
            raise ValidationError("No such user. Give an email and a password to create one.")
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"{user.username} added as {data['role']}.")
    return redirect("accounts:organization_settings")


@org_required
@require_POST
def member_role_change(request: HttpRequest, pk: int) -> HttpResponse:
    org = require_role(request, Role.ADMIN).organization
    target = selectors.get_object_for_org_or_404(
        Membership.objects.select_related("user"), org=org, pk=pk
    )
    form = RoleChangeForm(request.POST)
    if form.is_valid():
        try:
            services.membership_role_change(membership=target, role=form.cleaned_data["role"])
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
        else:
            messages.success(request, f"{target.user.username} is now {target.role}.")
    else:
        messages.error(request, "Choose a valid role.")
    return redirect(reverse("accounts:organization_settings"))
