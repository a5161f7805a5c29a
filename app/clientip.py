"""Who the client is: the socket's peer, or the forwarded address when the peer is our proxy.

We do not use uvicorn's --forwarded-allow-ips: it takes the left-most X-Forwarded-For entry,
which the client writes. Here the walk goes right to left, from the hop we trust, skipping our
own proxies, and stops at the first address we did not add ourselves: a client can put anything
in front of it, but nothing it writes can replace it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDRs; raises ValueError naming the entry that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51234"
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d: it is that IPv4 client, for
    # the limits (one key, not two) and for TRUSTED_PROXIES alike.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def is_trusted_address(address: str, trusted_proxies: Sequence[Network]) -> bool:
    """Whether `address` is one of our proxies."""
    parsed = _parse_ip(address)
    return parsed is not None and _trusted(parsed, trusted_proxies)


def is_trusted_peer(scope: Scope, trusted_proxies: Sequence[Network]) -> bool:
    """Whether the socket's peer is one of our proxies (whose forwarded headers we believe)."""
    return bool(scope.get("client")) and is_trusted_address(scope["client"][0], trusted_proxies)


def client_ip(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    peer_text = scope["client"][0] if scope.get("client") else "unknown"
    peer = _parse_ip(peer_text)
    if peer is None:
        return peer_text
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return str(peer)
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded.extend(value.decode("latin-1").split(","))
    client = peer
    for entry in reversed(forwarded):
        address = _parse_ip(entry)
        if address is None:
            break  # garbage where an address should be: keep the last hop we could trust
        client = address
        if not _trusted(address, trusted_proxies):
            break
    return str(client)


def limit_key(address: str) -> str:
    """IPv6 clients are keyed by their /64: one host usually holds a whole /64 to rotate through."""
    parsed = _parse_ip(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
