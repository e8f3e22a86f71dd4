"""Forward HTTP proxies as Go's http.Transport uses them (so blackbox_exporter's proxy_url & co).

- Which requests go through the proxy: ``proxy_url`` alone proxies every
  request (Go's ``http.ProxyURL``); with ``no_proxy`` or
  ``proxy_from_environment`` the rules of golang.org/x/net/http/httpproxy
  apply: ``localhost`` and loopback addresses never use a proxy, and
  ``no_proxy`` entries are ``*``, an IP, a CIDR, ``[v6]:port`` / ``ip:port``,
  or a domain (``example.com`` matches it and its subdomains,
  ``.example.com`` / ``*.example.com`` only the subdomains), each with an
  optional ``:port``.
- An ``http://`` target is requested from the proxy in absolute form
  (``GET http://host/path``) with ``Proxy-Authorization`` from the proxy
  URL's userinfo; an ``https://`` target through ``CONNECT host:port`` (the
  ``proxy_connect_header`` headers and the userinfo's
  ``Proxy-Authorization`` on the CONNECT only), then TLS end to end.
- Only ``http://`` proxies (Go also speaks https:// and socks5:// to a proxy).
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..schema import Secret
from . import http1
from .connection import Connection

__all__ = ["ProxyConfig", "ProxyError", "ProxyURL", "connect_request", "parse_connect_response", "parse_no_proxy",
           "parse_proxy_url", "tunnel"]

MAX_CONNECT_RESPONSE = 64 << 10


class ProxyError(Exception):
    """The proxy refused or broke the CONNECT."""


@dataclass(frozen=True, slots=True)
class ProxyURL:
    host: str
    port: int
    authorization: Secret | None = None  # "Basic ..." from the URL's userinfo
    shown: str = ""  # the URL without its userinfo, for logs


@dataclass(frozen=True, slots=True)
class NoProxy:
    everything: bool = False
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ips: tuple[tuple[str, str], ...] = ()  # (ip, port or "")
    domains: tuple[tuple[str, str, bool], ...] = ()  # (".suffix", port or "", the bare name matches too)

    def bypass(self, host: str, port: int, address: str | None = None) -> bool:
        """httpproxy's useProxy, negated: True when ``host:port`` goes direct.

        ``address``: the target's address when it was resolved here. blackbox asks Go about the
        address only (it puts it in the URL); a rule for the name or the address sends it direct here.
        """
        if address is not None and address != host and self.bypass(address, port):
            return True
        host = host.lower().strip("[]")
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            ip = None
        if host == "localhost" or ip is not None and ip.is_loopback:
            return True
        if self.everything:
            return True
        sport = str(port)
        if ip is not None:
            if any(ip in net for net in self.networks):
                return True
            if any(ipaddress.ip_address(i) == ip and p in ("", sport) for i, p in self.ips):
                return True
        return any((host.endswith(suffix) or bare and host == suffix[1:]) and p in ("", sport)
                   for suffix, p, bare in self.domains)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    http: ProxyURL | None = None  # for http:// targets
    https: ProxyURL | None = None  # for https:// targets
    no_proxy: NoProxy | None = None  # None: every request is proxied (proxy_url alone)
    connect_headers: tuple[tuple[str, Secret], ...] = ()
    skip_resolve: bool = False  # skip_resolve_phase_with_proxy: the proxy resolves the target's name

    def for_scheme(self, scheme: str) -> ProxyURL | None:
        return self.https if scheme == "https" else self.http

    def for_target(self, scheme: str, host: str, port: int, address: str | None = None) -> ProxyURL | None:
        proxy = self.for_scheme(scheme)
        if proxy is None or self.no_proxy is not None and self.no_proxy.bypass(host, port, address):
            return None
        return proxy


def parse_proxy_url(text: str) -> ProxyURL:
    """ValueError naming what is wrong; a scheme-less ``host:port`` is http:// (as httpproxy reads the environment)."""
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"proxy scheme {parts.scheme!r} is not supported (http:// only)")
    if not parts.hostname:
        raise ValueError("proxy URL has no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"proxy URL: {exc}") from None
    auth = None
    if parts.username is not None:
        auth = Secret(http1.basic_auth(parts.username, parts.password))
    netloc = parts.netloc.rpartition("@")[2]
    return ProxyURL(parts.hostname, port, auth, f"http://{netloc}")


def parse_no_proxy(text: str) -> NoProxy:
    networks, ips, domains = [], [], []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return NoProxy(everything=True)
        if "/" in entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
        host, port = _split_host_port(entry)
        if not host:
            continue
        try:
            ips.append((str(ipaddress.ip_address(host)), port))
            continue
        except ValueError:
            pass
        if host.startswith("*."):
            host = host[1:]
        bare = not host.startswith(".")
        domains.append((host if not bare else "." + host, port, bare))
    return NoProxy(False, tuple(networks), tuple(ips), tuple(domains))


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def from_environment(env: Mapping[str, str] | None = None) -> tuple[str | None, str | None, str]:
    """(HTTP_PROXY, HTTPS_PROXY, NO_PROXY) as Go reads them: upper case first, then lower case."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        return env.get(name) or env.get(name.lower()) or None

    return get("HTTP_PROXY"), get("HTTPS_PROXY"), get("NO_PROXY") or ""


def connect_request(authority: str, headers: list[tuple[str, str]]) -> bytes:
    """``CONNECT host:port HTTP/1.1`` with Host and the given headers (validated)."""
    lines = [f"CONNECT {authority} HTTP/1.1\r\n", f"Host: {authority}\r\n"]
    for name, value in headers:
        http1.validate_header(name, value)
        lines.append(f"{name}: {value.strip()}\r\n")
    return ("".join(lines) + "\r\n").encode("utf-8")


async def tunnel(conn: Connection, authority: str, headers: list[tuple[str, str]]) -> None:
    """CONNECT ``authority`` over ``conn`` (to the proxy); returns once the proxy answered 2xx."""
    conn.write(connect_request(authority, headers))
    await conn.drain()
    try:
        head = await conn.readuntil(b"\r\n\r\n", MAX_CONNECT_RESPONSE)
    except asyncio.IncompleteReadError:
        raise ProxyError("proxy closed the connection before answering CONNECT") from None
    except asyncio.LimitOverrunError:
        raise ProxyError(f"proxy's CONNECT answer is longer than {MAX_CONNECT_RESPONSE} bytes") from None
    parse_connect_response(head)


def parse_connect_response(head: bytes) -> int:
    """The status of a CONNECT response head; ProxyError unless it is HTTP/1.x 2xx."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise ProxyError(f"proxy answered CONNECT with {line[:80]!r}, not an HTTP/1.x status line")
    status = int(parts[1])
    if not 200 <= status < 300:
        reason = parts[2] if len(parts) > 2 else ""
        raise ProxyError(f"proxy answered CONNECT with {status} {reason[:80]}".rstrip())
    return status
