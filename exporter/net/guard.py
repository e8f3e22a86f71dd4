"""The SSRF guard: which names, addresses and ports a probe may connect to.

blackbox_exporter's ``/probe`` reaches any address, cloud metadata included
(its #1639, closed as by design). Here the connection layer asks the guard
twice for every connection it is about to open, redirect hops included:

- ``check_name`` before resolution: a denied name or port costs not even a
  DNS query;
- ``check_address`` with the address that will actually be connected to,
  after resolution. Checking the resolved address (not the target's text)
  is what makes every encoding of an address equal: ``2852039166``,
  ``0251.0376.0251.0376``, ``0xa9fea9fe`` and ``169.254.43518`` all resolve
  to 169.254.169.254, and an IPv4-mapped, IPv4-compatible or NAT64 IPv6
  address is checked as the IPv4 address it carries. A name that resolves to
  a denied address (DNS rebinding included) is caught here as well.

Rules are plain strings: a CIDR or address (``169.254.0.0/16``,
``fd00:ec2::254``), a port or port range (``:22``, ``:8000-8999``) or a host
pattern (``metadata.google.internal``, ``*.internal``). A destination is
forbidden when any deny rule matches it, or when ``allow`` has rules of a kind
(destinations: CIDRs and host patterns; ports) and none of that kind matches.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

__all__ = ["DEFAULT_DENY", "DEFAULT_GUARD", "ProbeGuard", "RuleSet", "TargetForbidden", "parse_rules"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Link-local (where the cloud metadata services live: AWS, Azure, GCP, OpenStack at
# 169.254.169.254) and the metadata endpoints outside it: AWS's IPv6 one, Alibaba's,
# GCP's name.
DEFAULT_DENY = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254", "100.100.100.200", "metadata.google.internal")

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_PATTERN_RE = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
_PORT_RE = re.compile(r":(\d{1,5})(?:-(\d{1,5}))?")


class TargetForbidden(Exception):
    """The guard refused a destination; the message names the rule."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[str, ...] = ()  # lower case; "*.x" matches every name below x
    ports: tuple[tuple[int, int], ...] = ()
    # (version, first, last, rule) per network: integer compares cost a fraction of `ip in network`.
    _ranges: tuple[tuple[int, int, int, str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = tuple((n.version, int(n.network_address), int(n.broadcast_address), str(n)) for n in self.networks)
        object.__setattr__(self, "_ranges", ranges)

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts or self.ports)

    def host_rule(self, host: str) -> str | None:
        name = _name(host)
        for pattern in self.hosts:
            if name == pattern or pattern.startswith("*.") and name.endswith(pattern[1:]):
                return pattern
        return None

    def network_rule(self, ip: str) -> str | None:
        for version, value in _forms(ip):
            for net_version, first, last, rule in self._ranges:
                if version == net_version and first <= value <= last:
                    return rule
        return None

    def port_rule(self, port: int) -> str | None:
        for low, high in self.ports:
            if low <= port <= high:
                return f":{low}" if low == high else f":{low}-{high}"
        return None


@dataclass(frozen=True, slots=True)
class ProbeGuard:
    allow: RuleSet = RuleSet()
    deny: RuleSet = RuleSet()
    apply_to_targets: bool = False  # configured targets too, not only /probe's

    def check_name(self, host: str, port: int) -> None:
        """Before resolution: the name and the port (a denied name never reaches a resolver)."""
        if rule := self.deny.host_rule(host) or self.deny.port_rule(port):
            raise TargetForbidden(f"{_where(host, host, port)} is denied by probe_guard rule {rule!r}")
        if self.allow.ports and not self.allow.port_rule(port):
            raise TargetForbidden(f"{_where(host, host, port)}: port {port} matches no probe_guard allow rule")

    def check_address(self, host: str, ip: str, port: int) -> None:
        """After check_name: the address about to be connected to (``host``: the name it came from, or ip again)."""
        if rule := self.deny.network_rule(ip):
            raise TargetForbidden(f"{_where(host, ip, port)} is denied by probe_guard rule {rule!r}")
        allow = self.allow
        if (allow.networks or allow.hosts) and not (allow.host_rule(host) or allow.network_rule(ip)):
            raise TargetForbidden(f"{_where(host, ip, port)} matches no probe_guard allow rule")

    def check(self, host: str, ip: str, port: int) -> None:
        self.check_name(host, port)
        self.check_address(host, ip, port)


def parse_rules(rules: list[str]) -> RuleSet:
    """ValueError (with the rule's index) for a rule that is none of CIDR, :port[-port], host pattern."""
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    ports: list[tuple[int, int]] = []
    for i, text in enumerate(rules):
        rule = text.strip().lower()
        if m := _PORT_RE.fullmatch(rule):
            low, high = int(m.group(1)), int(m.group(2) or m.group(1))
            if not 0 < low <= high < 65536:
                raise ValueError(f"[{i}]: invalid port range {text!r} (1-65535, low-high)")
            ports.append((low, high))
            continue
        try:
            networks.append(ipaddress.ip_network(rule, strict=False))
            continue
        except ValueError:
            pass
        if "/" in rule or ":" in rule or not _HOST_PATTERN_RE.fullmatch(rule.rstrip(".")):
            raise ValueError(f"[{i}]: {text!r} is neither a CIDR, a port (:22, :8000-8999) nor a host pattern (*.internal)")
        hosts.append(rule.rstrip("."))
    return RuleSet(tuple(networks), tuple(hosts), tuple(ports))


DEFAULT_GUARD = ProbeGuard(deny=parse_rules(list(DEFAULT_DENY)))


def _name(host: str) -> str:
    return host.lower().rstrip(".").strip("[]")


def _where(host: str, ip: str, port: int) -> str:
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return address if _name(host) == _name(ip) else f"{host} ({address})"


@functools.lru_cache(maxsize=4096)  # probes repeat their addresses; parsing costs µs
def _forms(text: str) -> tuple[tuple[int, int], ...]:
    """(version, value) of the address, and of the IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4)."""
    ip = ipaddress.ip_address(text.strip("[]").partition("%")[0])
    forms: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            forms.append(ip.ipv4_mapped)
        elif ip in _NAT64 or int(ip) >> 32 == 0 and int(ip) > 1:  # 64:ff9b::a.b.c.d, ::a.b.c.d
            forms.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            forms.append(ip.sixtofour)
    return tuple((f.version, int(f)) for f in forms)
