"""Network addresses as the ring writes them: "host:port", "[v6]:port", and a
virtual node's "host:port/i".

Owns parsing and printing them and deciding which one a node advertises: a node
bound to an unspecified address (0.0.0.0, ::) must be told the address peers
reach it at, since no peer can connect to "0.0.0.0". A process holding several
ring positions (virtual nodes) answers for all of them on one address; position
i > 0 is written with the suffix "/i", and the part before it (`host_of`) names the
machine, which is what replica placement keeps distinct. Pure: no sockets.
"""

from __future__ import annotations

import ipaddress

from .errors import describe

MAX_PORT = 65535
MAX_VNODES = 64  # ring positions one process may hold
_VNODE_MARK = "/"


def split_address(address: str) -> tuple[str, int]:
    """Parse "host:port" or "[v6]:port"; raise ValueError with the reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"address {describe(address)} is not HOST:PORT (IPv6 as [ADDRESS]:PORT)")
    port = int(port_text)
    if port > MAX_PORT:
        raise ValueError(f"port {port} in {describe(address)} is out of range")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"address {describe(address)} has an unbalanced bracket")
    if host.startswith("["):
        host = host[1:-1]
        if not _is_ipv6(host):
            raise ValueError(f"{describe(host)} in brackets is not an IPv6 address")
    elif ":" in host:
        raise ValueError(f"address {describe(address)}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    return host, port


def join_address(host: str, port: int) -> str:
    """The inverse of split_address: IPv6 hosts go in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_unspecified(host: str) -> bool:
    """True for the wildcard hosts ("", 0.0.0.0, ::) that bind every interface."""
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def advertised_address(bind_host: str, bound_port: int, advertise: str | None) -> str:
    """The address peers are told to use: `advertise` (its port 0 meaning the
    bound port), or the bound host itself. ValueError for a wildcard bind with
    nothing to advertise, or an advertised wildcard."""
    if advertise is None:
        if is_unspecified(bind_host):
            raise ValueError(
                f"listening on {join_address(bind_host or '0.0.0.0', bound_port)} binds every interface; "
                "give the address peers should use with --advertise HOST:PORT"
            )
        return join_address(bind_host, bound_port)
    host, port = split_address(advertise)
    if is_unspecified(host):
        raise ValueError(f"cannot advertise the unspecified address {advertise}; name a host peers can reach")
    return join_address(host, port or bound_port)


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def host_of(address: str) -> str:
    """The process an address reaches: the address without a virtual node's "/i"."""
    return address.partition(_VNODE_MARK)[0]


def vnode_index(address: str) -> int:
    """Which of its process's positions an address names: 0 for a plain address;
    ValueError for a suffix that is not 1..MAX_VNODES−1 in plain decimal."""
    _, mark, text = address.partition(_VNODE_MARK)
    if not mark:
        return 0
    if not text.isascii() or not text.isdigit() or text.startswith("0") or int(text[:3]) >= MAX_VNODES:
        raise ValueError(f"address {describe(address)}: a virtual node suffix is /1../{MAX_VNODES - 1}")
    return int(text)


def vnode_address(address: str, index: int) -> str:
    """The address of position `index` of the process at `address`."""
    if not 0 <= index < MAX_VNODES:
        raise ValueError(f"a process holds virtual nodes 0..{MAX_VNODES - 1}, not {index}")
    host = host_of(address)
    return host if index == 0 else f"{host}{_VNODE_MARK}{index}"
