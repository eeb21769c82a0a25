"""Forms for accounts: members, invitations, passwords and API tokens."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.password_validation import validate_password

from webapp.accounts import services
from webapp.accounts.models import Role, User


class MemberAddForm(forms.Form):
    """Add an existing user by username, or create one when email and password are given."""

    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ENGINEER)
    email = forms.EmailField(required=False, help_text="Only for a new user.")
    password = forms.CharField(
        required=False, widget=forms.PasswordInput, help_text="Only for a new user."
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("password")
        if password:
            validate_password(password)
        return cleaned


class RoleChangeForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class OrganizationSwitchForm(forms.Form):
    organization = forms.IntegerField(min_value=1)


class PasswordChangeForm(auth_forms.PasswordChangeForm):
    """Django's form (old password, Django's validators); saving clears the forced change.

    The view sets ``keep_session_key`` to the session that asked, whose sockets stay open."""

    keep_session_key: str | None = None

    def save(self, commit: bool = True) -> Any:
        return services.user_password_set(
            user=self.user,
            password=self.cleaned_data["new_password1"],
            keep_session_key=self.keep_session_key,
        )


class ResetSetPasswordForm(auth_forms.SetPasswordForm):  # type: ignore[type-arg]
    """The reset link's new-password form; saving clears the forced change too."""

    def save(self, commit: bool = True) -> Any:
        return services.user_password_set(
            user=self.user, password=self.cleaned_data["new_password1"]
        )


class InvitationForm(forms.Form):
    email = forms.EmailField(max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.ENGINEER)


class InvitationSignupForm(forms.Form):
    """A new account for an invitee: a username and their own password (validated)."""

    username = forms.CharField(max_length=150, help_text="Letters, digits and @.+-_ only.")
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.email = email

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"].strip()
        User.username_validator(username)
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError("That username is taken.")
        return username

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password1, password2 = cleaned.get("password1"), cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error("password2", "The two passwords differ.")
        elif password1:
            candidate = User(username=cleaned.get("username", ""), email=self.email)
            try:
                validate_password(password1, user=candidate)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned


TOKEN_EXPIRY_CHOICES = [
    (str(days) if days else "never", f"{days} days" if days else "Never")
    for days in services.API_TOKEN_EXPIRY_DAYS
]


class ApiTokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “CI on the lab server”.")
    expires_in = forms.ChoiceField(label="Expires", choices=TOKEN_EXPIRY_CHOICES, initial="90")

    def expires_in_days(self) -> int | None:
        value = self.cleaned_data["expires_in"]
        return None if value == "never" else int(value)
