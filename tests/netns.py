"""Network namespaces as sites, for the multi-host test (not collected: no `test_` prefix).

`sites(count)` makes one Linux network namespace per site, each joined to a
bridge in the test's own namespace by a veth pair, with one address per site
from 198.18.0.0/15 (RFC 2544's benchmark range, never routed): the test process
reaches every site through the bridge, the sites reach each other through it,
and nothing reaches anywhere else. `Site.cut()` takes a site's link down, as if
its uplink failed; `Site.reconnect()` brings it back.

Every name carries the creating process's ID (`cdnmh-PID-...`, interfaces
`cmPID...`), so runs side by side do not clash, and a run that died without
cleaning up is recognised (its PID is gone) and removed by the next one.
Needs root and `ip` (iproute2); `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

IP = shutil.which("ip") or "/usr/sbin/ip"
NAMESPACE_PREFIX = "cdnmh-"
LINK_PREFIX = "cm"
BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
TIMEOUT = 10.0  # seconds any one `ip` command may take


class NetnsError(RuntimeError):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...` (bounded in time); NetnsError with its stderr on failure when `check`."""
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (this test runs as root in CI)"
    if not os.path.exists(IP):
        return "`ip` (iproute2) is not installed"
    probe = f"{NAMESPACE_PREFIX}{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Site:
    """One site: a namespace with one address, linked to the bridge by a veth pair."""

    letter: str
    namespace: str
    address: str  # the site's one IPv4 address, without the prefix length
    bridge_end: str  # the veth end on the bridge, in the test's namespace
    site_end: str  # the veth end inside the namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """ARGV run inside this site's namespace."""
        return [IP, "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Take the site's link down: nothing reaches it and it reaches nothing."""
        ip("link", "set", self.bridge_end, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.bridge_end, "up")


@dataclass(frozen=True)
class Topology:
    bridge: str
    gateway: str  # the bridge's own address, the test process's side
    sites: list[Site]


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove namespaces and links left by runs whose process has gone: their
    processes are killed (by PID), their namespaces and interfaces deleted."""
    listed = ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({re.escape(NAMESPACE_PREFIX)}(\d+)-\S+)", listed, re.MULTILINE):
        namespace, pid = name
        if not _owner_alive(int(pid)):
            _delete_namespace(namespace)
    links = ip("-o", "link", "show", check=False).stdout
    for name, pid in re.findall(rf"^\d+: ({re.escape(LINK_PREFIX)}(\d+)[a-z]+)[@:]", links, re.MULTILINE):
        if not _owner_alive(int(pid)):
            ip("link", "del", name, check=False)


def _delete_namespace(namespace: str) -> None:
    """Kill what still runs in the namespace, then delete it (its veth ends go with it)."""
    pids = ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", namespace, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the benchmark range that no interface here uses yet."""
    used = ip("-o", "-4", "addr", "show", check=False).stdout
    taken = [ipaddress.ip_interface(found).network for found in re.findall(r"inet (\S+)", used)]
    for subnet in BENCHMARK_RANGE.subnets(new_prefix=24):
        if not any(subnet.overlaps(network) for network in taken):
            return subnet
    raise NetnsError("every /24 of 198.18.0.0/15 is in use")


@contextmanager
def sites(count: int) -> Iterator[Topology]:
    """`count` sites on a new bridge; everything made is removed on exit, even
    after a failure. Processes started in a site must be ended before exit."""
    if not 1 <= count <= 26:
        raise ValueError("between 1 and 26 sites")
    remove_stale()
    tag = str(os.getpid())
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    bridge = f"{LINK_PREFIX}{tag}br"
    topology = Topology(bridge, str(hosts[-1]), [])
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{topology.gateway}/{subnet.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")
        for index in range(count):
            letter = "abcdefghijklmnopqrstuvwxyz"[index]
            site = Site(
                letter, f"{NAMESPACE_PREFIX}{tag}-site-{letter}", str(hosts[index]),
                bridge_end=f"{LINK_PREFIX}{tag}{letter}h", site_end=f"{LINK_PREFIX}{tag}{letter}s",
            )
            topology.sites.append(site)
            ip("netns", "add", site.namespace)
            ip("-n", site.namespace, "link", "set", "lo", "up")
            ip("link", "add", site.bridge_end, "type", "veth", "peer", "name", site.site_end)
            ip("link", "set", site.site_end, "netns", site.namespace)
            ip("link", "set", site.bridge_end, "master", bridge)
            ip("link", "set", site.bridge_end, "up")
            ip("-n", site.namespace, "addr", "add", f"{site.address}/{subnet.prefixlen}", "dev", site.site_end)
            ip("-n", site.namespace, "link", "set", site.site_end, "up")
        yield topology
    finally:
        for site in topology.sites:
            _delete_namespace(site.namespace)
            ip("link", "del", site.bridge_end, check=False)
        ip("link", "del", bridge, check=False)
