"""Create the first admin user and the "Default" organisation; does nothing once users exist."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from webapp.accounts import services
from webapp.accounts.models import User


class Command(BaseCommand):
    help = "Create the first admin user and organisation 'Default' (only when no user exists)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="")
        parser.add_argument("--password", help="Default: a random one, printed once.")
        parser.add_argument("--organization", default="Default")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        if User.objects.exists():
            self.stdout.write("Users exist already; nothing to do.")
            return
        password = options["password"] or secrets.token_urlsafe(12)
        user = services.user_create(
            username=options["username"],
            email=options["email"],
            password=password,
            is_superuser=True,
            # A printed one-time password must be replaced at the first sign-in.
            must_change_password=not options["password"],
        )
        organization = services.organization_create(name=options["organization"], owner=user)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created admin user {user.username!r} in organisation {organization.name!r}."
            )
        )
        if not options["password"]:
            self.stdout.write(
                f"One-time password (you will be asked to change it at first sign-in): {password}"
            )
