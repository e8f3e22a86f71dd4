"""Name resolution: the system resolver, or explicit nameservers through dnspython.

Plain arguments only (no probe context, no module): the caller times the call
as its dns phase and maps the exceptions, which are left exactly as the
resolvers raise them: ``socket.gaierror`` from getaddrinfo,
``dns.resolver.NXDOMAIN`` / ``NoAnswer`` / ``NoNameservers`` and
``dns.exception.Timeout`` from dnspython, and ``NoAddressError`` when the
system resolver answered without an address of a wanted family.
"""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import time
from collections.abc import Sequence

import dns.asyncresolver
import dns.nameserver
import dns.rdatatype
import dns.resolver

__all__ = ["NoAddressError", "check_host", "families", "is_ip", "resolve"]

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


class NoAddressError(Exception):
    """The name resolved, but to no address of the wanted families."""


@functools.lru_cache(maxsize=1024)  # parsing costs µs on every probe; targets repeat
def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def check_host(host: str) -> None:
    """ValueError naming what is wrong with a target's host, before any lookup: a user's fault, not ours."""
    if not host:
        raise ValueError("has no host")
    if "%" in host:
        raise ValueError(f"host {host[:80]!r}: IPv6 zone identifiers (%) are not supported")
    if is_ip(host):
        return
    if len(host) > 253:
        raise ValueError(f"host name longer than 253 characters ({len(host)})")
    try:
        host.encode("idna")  # what getaddrinfo and the TLS SNI will need
    except UnicodeError as exc:
        reason = exc.__cause__ or exc
        raise ValueError(f"host {host[:80]!r} is not a valid (IDNA) host name: {reason}") from None


def families(preferred_ip_protocol: str, fallback: bool) -> list[int]:
    """Address families to try, in order: "ip4"/"ip6" first, the other one if ``fallback``."""
    preferred = socket.AF_INET6 if preferred_ip_protocol == "ip6" else socket.AF_INET
    other = socket.AF_INET if preferred == socket.AF_INET6 else socket.AF_INET6
    return [preferred, other] if fallback else [preferred]


async def resolve(
    host: str,
    families: Sequence[int],
    nameservers: tuple[tuple[str, int], ...] = (),
    timeout: float | None = None,
    budget: float = 10.0,
) -> tuple[str, int]:
    """(ip, family) of ``host``; an IP literal comes back at once, without a lookup.

    ``nameservers`` empty means the system resolver (getaddrinfo, which has its
    own timeouts: the caller bounds it by cancelling). Otherwise dnspython asks
    them for A/AAAA in ``families`` order, each query limited to ``timeout``
    and never more than ``budget`` (what is left of the caller's deadline).
    """
    known = literal(host)
    if known is not None:
        return known
    if nameservers:
        return await _resolve_with_nameservers(host, families, nameservers, min(timeout or budget, budget))
    return await _resolve_system(host, families)


def literal(host: str) -> tuple[str, int] | None:
    """(ip, family) of an IP literal, None for a name: the dns phase has nothing to do for a literal."""
    if is_ip(host):
        return host, socket.AF_INET6 if ":" in host else socket.AF_INET
    return None


@functools.lru_cache(maxsize=64)
def _dns_resolver(nameservers: tuple[tuple[str, int], ...]) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
    # A SERVFAIL is an answer worth reporting, not a reason to ask again.
    resolver.retry_servfail = False
    return resolver


async def _resolve_with_nameservers(
    host: str, families: Sequence[int], nameservers: tuple[tuple[str, int], ...], lifetime: float
) -> tuple[str, int]:
    resolver = _dns_resolver(nameservers)
    last_exc: Exception | None = None
    for family in families:
        rdtype = dns.rdatatype.AAAA if family == socket.AF_INET6 else dns.rdatatype.A
        try:
            # Absolute name, no search list: a probe target is what it says.
            answer = await resolver.resolve(host.rstrip(".") + ".", rdtype, lifetime=lifetime, search=False)
        except dns.resolver.NoAnswer as exc:
            last_exc = exc
            continue
        return str(answer[0]), family
    if last_exc is None:
        raise ValueError("resolve() needs at least one address family")
    raise last_exc


async def _resolve_system(host: str, families: Sequence[int]) -> tuple[str, int]:
    listed = await HOSTS.lookup(host)
    if listed is not None:
        for family in families:
            for ip, fam in listed:
                if fam == family:
                    return ip, family
        raise NoAddressError(f"{host} has no {'/'.join(_FAMILY_NAMES.get(f, str(f)) for f in families)} address")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    for family in families:
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam == family:
                return str(sockaddr[0]), family
    raise NoAddressError(f"{host} has no {'/'.join(_FAMILY_NAMES.get(f, str(f)) for f in families)} address")


# --- the hosts file, read here ------------------------------------------------------------------
# getaddrinfo runs on a worker thread and re-reads /etc/hosts (open, read, close, stat) on every
# call: ~60 µs of CPU and two thread hand-offs per probe of a name listed there (docs/benchmarks.md).
# Go's resolver, and so blackbox, reads the file itself, at most every 5 s. So do we, when
# nsswitch.conf's hosts line asks for "files" first (glibc then stops at a name the file lists);
# a name the file does not list goes to getaddrinfo as before. Addresses in file order, as Go;
# names compared case-insensitively, as glibc.
HOSTS_PATH = "/etc/hosts"
NSSWITCH_PATH = "/etc/nsswitch.conf"
HOSTS_MAX_BYTES = 4 << 20  # a bigger file (a block list) is left to getaddrinfo
HOSTS_CHECK_EVERY = 5.0  # seconds between looks at the files' mtimes, as Go


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _files_first(path: str) -> bool:
    """nsswitch.conf's hosts line starts with "files" (glibc's default without the file is dns first)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if words and words[0] == "hosts:":
                    return len(words) > 1 and words[1] == "files"
    except OSError:
        pass
    return False


def load_hosts(hosts_path: str, nsswitch_path: str) -> dict[str, tuple[tuple[str, int], ...]] | None:
    """name (lower case) -> its (ip, family)s in file order; None when the file is not ours to read. Blocking."""
    if not _files_first(nsswitch_path):
        return None
    try:
        with open(hosts_path, "rb") as f:
            data = f.read(HOSTS_MAX_BYTES + 1)
    except OSError:
        return None
    if len(data) > HOSTS_MAX_BYTES:
        return None
    names: dict[str, list[tuple[str, int]]] = {}
    for raw in data.decode("utf-8", errors="replace").splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 2 or "%" in words[0]:  # zone identifiers are not supported (check_host)
            continue
        try:
            addr = ipaddress.ip_address(words[0])
        except ValueError:
            continue
        entry = (str(addr), socket.AF_INET6 if addr.version == 6 else socket.AF_INET)
        for name in words[1:]:
            listed = names.setdefault(name.lower(), [])
            if entry not in listed:
                listed.append(entry)
    return {name: tuple(entries) for name, entries in names.items()}


class HostsFile:
    """/etc/hosts as the system resolver's first source: looked at every ``HOSTS_CHECK_EVERY`` seconds,
    parsed off the loop when it changed."""

    def __init__(self, hosts_path: str = HOSTS_PATH, nsswitch_path: str = NSSWITCH_PATH) -> None:
        self.hosts_path = hosts_path
        self.nsswitch_path = nsswitch_path
        self._checked = -HOSTS_CHECK_EVERY - 1.0
        self._stamp: object = None
        self._names: dict[str, tuple[tuple[str, int], ...]] | None = None

    async def lookup(self, host: str) -> tuple[tuple[str, int], ...] | None:
        """The file's addresses for ``host``; None: not listed (or the file is not read here): ask getaddrinfo."""
        now = time.monotonic()
        if now - self._checked >= HOSTS_CHECK_EVERY:
            self._checked = now  # probes arriving meanwhile use what is known
            stamp = (_file_stamp(self.nsswitch_path), _file_stamp(self.hosts_path))
            if stamp != self._stamp:
                self._names = await asyncio.to_thread(load_hosts, self.hosts_path, self.nsswitch_path)
                self._stamp = stamp
        names = self._names
        return None if names is None else names.get(host.lower())


HOSTS = HostsFile()
