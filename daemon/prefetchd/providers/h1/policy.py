"""Where the http provider may connect: an address policy checked after DNS, on the
address actually connected to, on every redirect hop."""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: cloud metadata services outside link-local (AWS IPv6, Alibaba); 169.254.169.254
#: (AWS, GCP, Azure, OpenStack...) is link-local, which is always refused
METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: someone's inside
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The policy forbids connecting to `address` (which `host` named or resolved to)."""

    def __init__(self, host: str, address: IPAddress, why: str, fixable: bool) -> None:
        named = "" if host == str(address) else f" ({host})"
        super().__init__(f"refusing to connect to {address}{named}: {why}")
        self.fixable = fixable  # allow_private_networks would allow it


class AddressPolicy:
    """Where the http provider may connect: never to link-local or cloud metadata
    addresses, to loopback and private ranges only when `allow_private` (a provider's
    allow_private_networks). Agents may be steered by untrusted text to ask for any URL:
    the check is on the address actually connected to, after DNS (a name that resolves
    differently later gains nothing), on every redirect hop."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def check(self, host: str, address: IPAddress) -> None:
        ip = embedded_ipv4(address)
        if ip.is_link_local or ip in METADATA:
            raise AddressRefused(host, ip, "a link-local or cloud metadata address", False)
        if ip.is_multicast:
            raise AddressRefused(host, ip, "a multicast address", False)
        if self.allow_private:
            return
        if ip.is_loopback or ip.is_private or ip.is_unspecified or ip in SHARED:
            raise AddressRefused(host, ip, "a loopback or private address", True)

    def check_literal(self, host: str, *, resolved_elsewhere: bool = False) -> IPAddress | None:
        """Check `host` when it is an IP address in any form a resolver accepts (dotted,
        decimal 2852039166, hex, octal, IPv6); the address, or None for a name. When a
        proxy will resolve the name (`resolved_elsewhere`), `localhost` and `*.localhost`
        count as loopback (RFC 6761); other names are the proxy's to check."""
        address = literal_ip(host)
        if address is not None:
            self.check(host, address)
        elif resolved_elsewhere and (host == "localhost" or host.endswith(".localhost")):
            self.check(host, ipaddress.ip_address("127.0.0.1"))
        return address


def literal_ip(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one; inet_aton reads the old forms (2852039166,
    0xa9fea9fe, 0251.0376.0251.0376) that resolvers and browsers accept too."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one leads to (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d,
    NAT64 64:ff9b::/96), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        if packed[:12] == bytes(12) and packed[12:] not in (bytes(4), b"\0\0\0\1"):
            return ipaddress.IPv4Address(packed[12:])
        if address in NAT64:
            return ipaddress.IPv4Address(packed[12:])
    return address
