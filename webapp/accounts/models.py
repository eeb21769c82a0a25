"""Users, organisations and memberships, plus the base every organisation-owned row uses."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models

_M = TypeVar("_M", bound=models.Model)


class User(AbstractUser):
    """EdgeSlim's user. Kept as Django's own so admin, auth views and DRF work unchanged."""

    must_change_password = models.BooleanField(
        default=False,
        help_text="Set for a password someone else chose (the bootstrap's one-time password, "
        "an admin-made account); every page leads to the change form until it is changed.",
    )


class Organization(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class OrgScopedQuerySet(models.QuerySet[_M]):
    def for_org(self, org: Organization | int) -> OrgScopedQuerySet[_M]:
        """Rows of ``org`` only: the one filter every org-scoped read starts from."""
        return self.filter(organization=org)


class OrgScopedModel(models.Model):
    """Abstract base of every row that belongs to an organisation.

    Views fetch such rows with ``get_object_for_org_or_404`` so another organisation's id
    answers 404, never 403: ids reveal nothing.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="%(app_label)s_%(class)s_set"
    )

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        abstract = True


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    ENGINEER = "engineer", "Engineer"
    MANAGER = "manager", "Manager"


class Membership(OrgScopedModel):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ENGINEER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class ApiToken(models.Model):
    """An API token. Only its SHA-256 is stored; the token itself is shown once, at creation."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="Recorded at most once a minute."
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash_key(key: str) -> str:
        # Tokens are 256 random bits, so a fast hash is enough (no salt or stretching needed).
        return hashlib.sha256(key.encode()).hexdigest()

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def is_usable(self, now: datetime) -> bool:
        return self.revoked_at is None and not self.is_expired(now)


class Invitation(OrgScopedModel):
    """An emailed invitation to join an organisation with a role: one use, expiring.

    Like API tokens, only the SHA-256 of the link's key is stored.
    """

    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ENGINEER)
    key_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    def is_pending(self, now: datetime) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now
