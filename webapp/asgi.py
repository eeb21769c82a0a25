"""ASGI entry point: HTTP through Django, websockets through Channels (session-authenticated,
Origin-checked)."""

from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_asgi_app = get_asgi_application()
# Bigger body messages: large artifact downloads pass 16x fewer ASGI messages through daphne.
django_asgi_app.chunk_size = 1 << 20

# Imports below need the app registry ready.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from webapp.body_limit import BodyLimitMiddleware, install_daphne_guard  # noqa: E402
from webapp.proxy import TrustedProxyMiddleware  # noqa: E402
from webapp.routing import websocket_urlpatterns  # noqa: E402

# Behind a trusted proxy (EDGESLIM_TRUSTED_PROXIES), Django's REMOTE_ADDR and Channels'
# scope["client"] are the real client's address.
application = TrustedProxyMiddleware(
    ProtocolTypeRouter(
        {
            # Bodies are capped per route, and anonymous uploads refused, before they are read.
            "http": BodyLimitMiddleware(django_asgi_app),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    ),
    trusted=settings.EDGESLIM_TRUSTED_PROXIES,
)

# daphne stores a whole body before it calls the application: the same caps apply there first.
install_daphne_guard()

# Everything imported so far lives as long as the process: keep it out of the cyclic GC's
# full collections, whose pauses otherwise stall every open socket (hundreds of ms with torch).
gc.freeze()
