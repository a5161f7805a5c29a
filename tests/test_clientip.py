"""Who the client is, for the limits: the address a shopper cannot change by writing headers."""

from __future__ import annotations

from typing import Any

from app.clientip import client_ip, limit_key, parse_networks


def scope(peer: str, forwarded: str | None = None) -> dict[str, Any]:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return {"type": "http", "client": (peer, 50000), "headers": headers}


def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address() -> None:
    """A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: one client, one key."""
    assert client_ip(scope("::ffff:198.51.100.7"), ()) == "198.51.100.7"
    assert limit_key(client_ip(scope("::ffff:198.51.100.7"), ())) == limit_key("198.51.100.7")
    assert limit_key("::ffff:198.51.100.7") == "198.51.100.7"


def test_an_ipv4_mapped_forwarded_address_counts_as_its_ipv4_address() -> None:
    proxies = parse_networks(["127.0.0.1"])
    assert client_ip(scope("127.0.0.1", "::ffff:198.51.100.7"), proxies) == "198.51.100.7"
    # A proxy that itself connects over a dual-stack socket is still the trusted proxy.
    assert client_ip(scope("::ffff:127.0.0.1", "198.51.100.7"), proxies) == "198.51.100.7"


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:2::1") != limit_key("2001:db8:1:3::1")
