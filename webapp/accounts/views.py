"""Login, passwords (change, forced change, reset), the organisation switcher, the members
page with invitations, and the API-token page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from webapp.accounts import selectors, services
from webapp.accounts.forms import (
    ApiTokenCreateForm,
    InvitationForm,
    InvitationSignupForm,
    MemberAddForm,
    OrganizationSwitchForm,
    PasswordChangeForm,
    ResetSetPasswordForm,
    RoleChangeForm,
)
from webapp.accounts.middleware import SESSION_ORG_KEY
from webapp.accounts.models import ApiToken, Invitation, Membership, Role, User
from webapp.accounts.permissions import ADMIN, READ, SIGNED_IN, login_page, org_page
from webapp.accounts.throttling import (
    login_failure_record,
    login_success_record,
    login_wait_seconds,
    throttled_message,
)


class LoginView(auth_views.LoginView):
    """Django's login view with failed-attempt throttling (429 once over the limit)."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        wait_s = login_wait_seconds(request, username)
        if wait_s:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, throttled_message(wait_s))
            response = self.render_to_response(self.get_context_data(form=form), status=429)
            response["Retry-After"] = str(wait_s)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        login_failure_record(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        login_success_record(self.request, self.request.POST.get("username", ""))
        return super().form_valid(form)


class LogoutView(auth_views.LogoutView):
    pass


def _safe_next(request: HttpRequest, target: str) -> str | None:
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


def _back(request: HttpRequest, fallback: str = "home") -> HttpResponseRedirect:
    target = _safe_next(request, request.POST.get("next") or request.headers.get("referer") or "")
    if target:
        return HttpResponseRedirect(target)
    return redirect(fallback)


class PasswordChangeView(auth_views.PasswordChangeView):
    """Any role changes their own password; the session stays signed in.

    Django's view calls ``update_session_auth_hash``, so this browser stays signed in while
    other sessions of the user end. It is also where a forced change lands.
    """

    access = SIGNED_IN  # Django's view requires the login; declared for the role matrix
    template_name = "accounts/password_change.html"
    form_class = PasswordChangeForm

    def get_success_url(self) -> str:
        return _safe_next(self.request, self.request.POST.get("next", "")) or reverse("home")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        requested = self.request.POST.get("next") or self.request.GET.get("next") or ""
        context["next"] = _safe_next(self.request, requested) or ""
        return context

    def form_valid(self, form: Any) -> HttpResponse:
        # The key before Django cycles it: this session's open sockets stay, the others close.
        form.keep_session_key = self.request.session.session_key
        response = super().form_valid(form)
        messages.success(self.request, "Your password was changed.")
        return response


class PasswordResetView(auth_views.PasswordResetView):
    """Emails a reset link. The answer is the same whether or not the address has an account."""

    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    form_class = ResetSetPasswordForm
    success_url = reverse_lazy("accounts:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


@login_page
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


@org_page(READ)
def organization_settings(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    org = membership.organization
    return render(
        request,
        "accounts/organization_settings.html",
        {
            "members": selectors.membership_list_for_org(organization=org),
            "add_form": MemberAddForm(),
            "invite_form": InvitationForm(),
            "invitations": (
                selectors.invitation_list_pending(organization=org) if membership.is_admin else []
            ),
            "roles": Role.choices,
            "can_manage": membership.is_admin,
        },
    )


@org_page(ADMIN)
@require_POST
def member_add(request: HttpRequest) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
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
                # The admin chose it, so the new member picks their own at first sign-in.
                must_change_password=True,
            )
        else:
            raise ValidationError("No such user. Give an email and a password to create one.")
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"{user.username} added as {data['role']}.")
    return redirect("accounts:organization_settings")


@org_page(ADMIN)
@require_POST
def member_role_change(request: HttpRequest, pk: int) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
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


@org_page(ADMIN)
@require_POST
def member_remove(request: HttpRequest, pk: int) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    target = selectors.get_object_for_org_or_404(
        Membership.objects.select_related("user"), org=org, pk=pk
    )
    try:
        services.membership_remove(membership=target)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"{target.user.username} was removed from {org.name}.")
    return redirect(reverse("accounts:organization_settings"))


def _flash_errors(request: HttpRequest, form_errors: dict[str, Any]) -> None:
    for errors in form_errors.values():
        for error in errors:
            messages.error(request, str(error))


@org_page(ADMIN)
@require_POST
def invitation_create(request: HttpRequest) -> HttpResponse:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    form = InvitationForm(request.POST)
    if not form.is_valid():
        _flash_errors(request, form.errors)
        return redirect("accounts:organization_settings")
    try:
        invitation, key = services.invitation_create(
            organization=membership.organization,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            invited_by=request.user,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("accounts:organization_settings")
    accept_url = request.build_absolute_uri(reverse("accounts:invitation_accept", args=[key]))
    services.invitation_send(invitation=invitation, accept_url=accept_url)
    # Shown once, for when mail is not set up (the embedded mode prints it on the console).
    messages.success(
        request,
        f"Invitation sent to {invitation.email} as {invitation.role}. "
        f"The link, shown only now: {accept_url}",
    )
    return redirect("accounts:organization_settings")


@org_page(ADMIN)
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    org = request.organization  # type: ignore[attr-defined]
    invitation = selectors.get_object_for_org_or_404(Invitation, org=org, pk=pk)
    try:
        services.invitation_revoke(invitation=invitation)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    else:
        messages.success(request, f"The invitation to {invitation.email} was revoked.")
    return redirect("accounts:organization_settings")


def invitation_accept(request: HttpRequest, key: str) -> HttpResponse:
    """The invitation link: a new account (anonymous) or joining (signed in)."""
    invitation = selectors.invitation_get_pending_by_key(key=key)
    if invitation is None:
        return render(request, "accounts/invitation_invalid.html", status=404)
    user = request.user if request.user.is_authenticated else None
    form = InvitationSignupForm(email=invitation.email) if user is None else None
    already_member = user is not None and (
        selectors.membership_get(user=user, organization_id=invitation.organization_id) is not None
    )
    if request.method == "POST" and not already_member:
        try:
            if user is not None:
                services.invitation_accept(invitation=invitation, user=user)
            else:
                form = InvitationSignupForm(request.POST, email=invitation.email)
                if form.is_valid():
                    user = services.invitation_accept_as_new_user(
                        invitation=invitation,
                        username=form.cleaned_data["username"],
                        password=form.cleaned_data["password1"],
                    )
                    auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        except ValidationError as exc:
            for message in exc.messages:
                messages.error(request, message)
            return redirect("accounts:invitation_accept", key=key)
        if user is not None:
            request.session[SESSION_ORG_KEY] = invitation.organization_id
            messages.success(
                request, f"Welcome to {invitation.organization.name}, as {invitation.role}."
            )
            return redirect("home")
    return render(
        request,
        "accounts/invitation_accept.html",
        {"invitation": invitation, "form": form, "already_member": already_member},
        status=400 if form is not None and form.is_bound else 200,
    )


@login_page
def api_tokens(request: HttpRequest) -> HttpResponse:
    """The signed-in user's API tokens: make one (its key shown once, on this response), list."""
    user: User = request.user  # type: ignore[assignment]
    form = ApiTokenCreateForm()
    created: tuple[ApiToken, str] | None = None
    status = 200
    if request.method == "POST":
        form = ApiTokenCreateForm(request.POST)
        if form.is_valid():
            created = services.api_token_create(
                user=user,
                name=form.cleaned_data["name"],
                expires_in_days=form.expires_in_days(),
            )
            form = ApiTokenCreateForm()
            status = 201
        else:
            status = 400
    return render(
        request,
        "accounts/api_tokens.html",
        {
            "form": form,
            "tokens": selectors.api_token_list_for_user(user=user),
            "created": created,
            "now": timezone.now(),
        },
        status=status,
    )


@login_page
@require_POST
def api_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    # Tokens belong to one user: anyone else's id is a 404, like another organisation's rows.
    token = get_object_or_404(ApiToken, pk=pk, user=request.user, revoked_at=None)
    services.api_token_revoke(token=token)
    messages.success(request, f"Token “{token.name}” ({token.prefix}…) was revoked.")
    return redirect("accounts:api_tokens")
