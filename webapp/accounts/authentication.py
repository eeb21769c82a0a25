"""DRF authentication by hashed API token (``Authorization: Token <key>`` or ``Bearer <key>``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from webapp.accounts.models import ApiToken

LAST_USED_RESOLUTION = timedelta(minutes=1)


class HashedTokenAuthentication(authentication.TokenAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() not in (b"token", b"bearer"):
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        try:
            key = parts[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token header.") from exc
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        token = (
            ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash_key(key)).first()
        )
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid token.")
        now = timezone.now()
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token was revoked.")
        if token.is_expired(now):
            raise exceptions.AuthenticationFailed(
                "This token has expired. Make a new one on the API tokens page."
            )
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            # One write a minute at most: a busy client must not turn every read into a write.
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token
