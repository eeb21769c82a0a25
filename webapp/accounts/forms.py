from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.password_validation import validate_password

from webapp.accounts.models import Role


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
