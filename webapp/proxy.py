"""The real client address behind a trusted reverse proxy (an ASGI middleware).

Behind the TLS proxy every connection comes from the proxy's address, so without this every user
shares one ``REMOTE_ADDR`` (and one login-throttle bucket). ``EDGESLIM_TRUSTED_PROXIES`` lists the
proxies' addresses or networks (``10.0.0.5``, ``172.16.0.0/12``). For a connection from one of
them, the client address in the ASGI scope (Django's ``REMOTE_ADDR``, Channels'
``scope["client"]``) becomes the right-most ``X-Forwarded-For`` entry that is not itself a trusted
proxy: entries further left were written by the client and prove nothing. Connections from any
other address keep their peer address, whatever headers they send.

The same goes for the scheme: for a connection from a trusted proxy, ``X-Forwarded-Proto`` (its
right-most value, the one the nearest proxy wrote) sets the scope's ``scheme`` (``http``/``https``,
``ws``/``wss`` for websockets), which Django reads for ``request.is_secure()``, the HTTPS
redirect and secure cookies. Django's ``SECURE_PROXY_SSL_HEADER`` is not set: it believes the
header from any client, who could then pass as HTTPS over plain HTTP.

daphne's own ``--proxy-headers`` is not used: it believes ``X-Forwarded-For`` from every peer and
takes its left-most entry, which a client chooses whenever the proxy appends to the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """``["10.0.0.5", "172.16.0.0/12"]`` → networks; a bad entry raises ``ValueError``."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5123"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def forwarded_client(peer: str, forwarded_for: list[str], trusted: list[Network]) -> str | None:
    """The client address a trusted ``peer`` reports, or ``None`` to keep the peer's own.

    ``forwarded_for`` holds the ``X-Forwarded-For`` header values in order received. The chain is
    walked from the right (the hop nearest to us) past trusted proxies; the first other address is
    the client. A malformed entry ends the walk: nothing left of it can be trusted.
    """
    peer_address = _address(peer)
    if peer_address is None or not any(peer_address in net for net in trusted):
        return None
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client: str | None = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not any(address in net for net in trusted):
            break
    return client


def forwarded_scheme(forwarded_proto: list[str], *, websocket: bool = False) -> str | None:
    """The scheme a trusted proxy reports in ``X-Forwarded-Proto`` (its right-most value, the
    nearest proxy's), as an ASGI scope names it; ``None`` when absent or not http/https."""
    hops = [hop.strip().lower() for value in forwarded_proto for hop in value.split(",")]
    hops = [hop for hop in hops if hop]
    if not hops or hops[-1] not in {"http", "https"}:
        return None
    secure = hops[-1] == "https"
    if websocket:
        return "wss" if secure else "ws"
    return "https" if secure else "http"


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for n, v in scope.get("headers") or [] if n.lower() == name]


class TrustedProxyMiddleware:
    """Rewrites ``scope["client"]`` and ``scope["scheme"]`` for HTTP and websocket connections
    from trusted proxies, from ``X-Forwarded-For`` and ``X-Forwarded-Proto``."""

    def __init__(self, app: ASGIApp, trusted: list[Network]) -> None:
        self.app = app
        self.trusted = trusted

    def _trusted_peer(self, scope: Scope) -> bool:
        client = scope.get("client")
        peer = _address(str(client[0])) if client else None
        return peer is not None and any(peer in net for net in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted and scope["type"] in {"http", "websocket"} and self._trusted_peer(scope):
            updates: dict[str, Any] = {}
            values = _header_values(scope, b"x-forwarded-for")
            client = forwarded_client(str(scope["client"][0]), values, self.trusted)
            if values and client is not None:
                updates["client"] = [client, 0]
            scheme = forwarded_scheme(
                _header_values(scope, b"x-forwarded-proto"),
                websocket=scope["type"] == "websocket",
            )
            if scheme is not None:
                updates["scheme"] = scheme
            if updates:
                scope = {**scope, **updates}
        await self.app(scope, receive, send)
