"""Browser sockets follow access: whatever changes what a user may see tells their open sockets.

A browser socket is authorised once, at its handshake. Every socket a signed-in browser opens
also joins ``user.<id>``; when that user's access changes, an ``access.changed`` message goes to
the group and each socket decides (``webapp.live.consumers.BrowserGroupConsumer``):

- ``logout``: the socket of that session closes with 4401; the user's other sessions stay.
- ``password``: every session but the one that changed it closes with 4401 (Django ends those
  sessions at their next request; their sockets end now).
- ``membership`` (added, removed, role changed) and ``deactivated``: every socket of the user
  closes, 4403 for a removed or deactivated user, 4409 otherwise, and the page reconnects: the
  new handshake authorises against the access the user has now.

The signals below cover every write path (services, the admin site, the shell), and the message
is sent after the transaction commits, so a socket never re-checks a row that is not there yet.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from webapp.accounts.models import Membership, User

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "access.changed"
REASONS = ("logout", "password", "membership", "deactivated")


def user_access_group(user_id: int) -> str:
    """The channel-layer group every browser socket of one user joins: ``user.<id>``."""
    return f"user.{int(user_id)}"


def access_changed_notify(
    *,
    user_id: int,
    reason: str,
    session_key: str | None = None,
    keep_session_key: str | None = None,
) -> None:
    """Tell ``user_id``'s open sockets that their access changed (after the commit).

    ``session_key`` limits a ``logout`` to one session; ``keep_session_key`` spares the session
    that changed the password. A channel layer that is down is logged, never raised: the change
    itself has happened, and every socket re-authorises at its next handshake anyway.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown access change {reason!r}; one of {', '.join(REASONS)}")
    message: dict[str, Any] = {"type": MESSAGE_TYPE, "reason": reason, "user_id": int(user_id)}
    if session_key:
        message["session_key"] = session_key
    if keep_session_key:
        message["keep_session_key"] = keep_session_key

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(user_access_group(user_id), message)
        except Exception:  # Redis away: sockets re-check at their next handshake
            logger.warning("could not tell user %s's sockets (%s)", user_id, reason, exc_info=True)

    transaction.on_commit(send)


@receiver(user_logged_out, dispatch_uid="edgeslim.access.logout")
def _on_logout(sender: Any, request: Any, user: User | None, **kwargs: Any) -> None:
    if user is None or request is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        access_changed_notify(user_id=user.pk, reason="logout", session_key=session_key)


@receiver(post_save, sender=Membership, dispatch_uid="edgeslim.access.membership_saved")
def _on_membership_saved(sender: Any, instance: Membership, **kwargs: Any) -> None:
    access_changed_notify(user_id=instance.user_id, reason="membership")


@receiver(post_delete, sender=Membership, dispatch_uid="edgeslim.access.membership_deleted")
def _on_membership_deleted(sender: Any, instance: Membership, **kwargs: Any) -> None:
    access_changed_notify(user_id=instance.user_id, reason="membership")


@receiver(post_save, sender=User, dispatch_uid="edgeslim.access.user_saved")
def _on_user_saved(sender: Any, instance: User, created: bool, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        access_changed_notify(user_id=instance.pk, reason="deactivated")


@receiver(post_delete, sender=User, dispatch_uid="edgeslim.access.user_deleted")
def _on_user_deleted(sender: Any, instance: User, **kwargs: Any) -> None:
    access_changed_notify(user_id=instance.pk, reason="deactivated")
