"""Failure attribution: the one place where an exception becomes a (phase, reason).

Probers never invent reasons. A prober registers its own reasons
(``register_reasons``) next to the shared ones below, then either raises
``ProbeFailure`` with one of them (for checks it makes itself: status codes,
regexes, ...) or lets the low-level exception escape; ``classify`` maps both,
most specific match first, with the prober's ``Rules`` (its phases' timeout
reasons, its parsers' exception types).
"""
from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.resolver

from .net.guard import TargetForbidden
from .net.resolve import NoAddressError
from .result import Failure


@dataclass(frozen=True, slots=True)
class Reason:
    phase: str  # the phase the reason normally belongs to ("any" for probe-wide)
    meaning: str
    typical_cause: str


REASONS: dict[str, Reason] = {
    # dns
    "dns_nxdomain": Reason("dns", "the name does not exist (NXDOMAIN)", "typo in the target, record deleted, wrong search domain"),
    "dns_servfail": Reason("dns", "the resolver failed to answer (SERVFAIL/REFUSED)", "broken upstream zone, DNSSEC failure, resolver overloaded"),
    "dns_timeout": Reason("dns", "no DNS answer before the deadline", "resolver unreachable or dropping queries"),
    "dns_no_address": Reason("dns", "the name exists but has no A/AAAA record for the wanted family", "only IPv6 published while ipv4 preferred without fallback, CNAME to nowhere"),
    # connect
    "connect_refused": Reason("connect", "the host answered the SYN with a reset", "nothing listening on the port, service down"),
    "connect_timeout": Reason("connect", "no SYN-ACK before the deadline", "firewall dropping packets, host down, blackholed route"),
    "connect_unreachable": Reason("connect", "a router or the kernel reported the host/network unreachable", "no route, ICMP unreachable from a firewall"),
    "target_forbidden": Reason("connect", "probe_guard forbids the name, address or port (checked after resolution, on every redirect hop); nothing was sent to it", "a /probe target or a redirect pointing at cloud metadata, link-local or outside probe_guard.allow"),
    "connect_reset": Reason("connect", "the peer reset the connection right after accepting it, before the TLS handshake completed", "load balancer without healthy backends, accept-queue overflow, TCP wrappers"),
    # tls
    "tls_handshake_timeout": Reason("tls", "the TLS handshake did not complete before the deadline", "server accepts but never answers (overload, wrong port speaking another protocol)"),
    "tls_cert_expired": Reason("tls", "a certificate in the chain has expired", "certificate not renewed"),
    "tls_cert_not_yet_valid": Reason("tls", "a certificate in the chain is not valid yet", "clock skew, certificate issued with a future notBefore"),
    "tls_cert_untrusted": Reason("tls", "the chain does not lead to a trusted CA (unknown CA, self-signed, incomplete chain)", "private CA not in the trust store, missing intermediate"),
    "tls_hostname_mismatch": Reason("tls", "the certificate does not cover the name (or IP) that was asked for", "wrong certificate on a virtual host, missing SAN"),
    "tls_protocol_version": Reason("tls", "client and server share no TLS version", "server only speaks TLS 1.0/1.1, min_version too high"),
    "tls_handshake_error": Reason("tls", "the TLS handshake failed for another reason (alert, no shared cipher, server hung up)", "cipher mismatch, client certificate required, not a TLS port"),
    "connection_reset": Reason("any", "the peer reset or closed the connection in the middle of the exchange", "server crash, proxy idle timeout shorter than the client's, keep-alive reuse of a dead connection"),
    "protocol_error": Reason("any", "the peer's answer is not valid for the protocol (malformed status line or headers, query_response expectation not met)", "wrong port, non-HTTP service, broken proxy"),
    # probe-wide
    "invalid_target": Reason("probe", "the target is not valid for the prober (not a URL, no port, a host name that cannot be encoded, an IPv6 zone)", "typo in a target file, wrong module for the target"),
    "config_file_missing": Reason("probe", "a file the module references (CA, certificate, key, password, token or body file) is missing, unreadable, too large or not usable (not PEM, a key that does not match its certificate); nothing was sent", "file not deployed or not mounted into the container, wrong path, permissions"),
    "resource_exhausted": Reason("any", "the exporter ran out of a local resource (open files: EMFILE/ENFILE, socket buffers, memory) — not the target's fault", "open-file limit too low for the probe concurrency (see the start-up warning), too many concurrent probes"),
    "probe_timeout": Reason("any", "the probe's overall deadline ran out in a phase without a timeout reason of its own (writing the request, body transfer, query_response)", "server stalls mid-body, deadline shorter than the work"),
    "internal_error": Reason("any", "a bug in connhealth (never a target's fault); the log has the traceback", "please report it"),
}

# A timeout in these phases has its own reason whatever the prober; a prober
# declares its own phases' timeout reasons (Rules.timeout_reasons).
_PHASE_TIMEOUT_REASON: dict[str, str] = {
    "dns": "dns_timeout",
    "connect": "connect_timeout",
    "tls": "tls_handshake_timeout",
}

# OpenSSL verify codes (X509_V_ERR_*) -> reason.
_VERIFY_CODE_REASON: dict[int, str] = {
    9: "tls_cert_not_yet_valid",  # CERT_NOT_YET_VALID
    10: "tls_cert_expired",  # CERT_HAS_EXPIRED
    2: "tls_cert_untrusted",  # UNABLE_TO_GET_ISSUER_CERT
    18: "tls_cert_untrusted",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "tls_cert_untrusted",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "tls_cert_untrusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "tls_cert_untrusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "tls_hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "tls_hostname_mismatch",  # IP_ADDRESS_MISMATCH
}

# Substrings of OpenSSL reason codes meaning "no common protocol version".
_VERSION_MARKERS = (
    "UNSUPPORTED_PROTOCOL",
    "PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_SSL_VERSION",
    "VERSION_TOO_LOW",
    "VERSION_TOO_HIGH",
)

_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_EXHAUSTED_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}


def register_reasons(reasons: Mapping[str, Reason]) -> None:
    """A prober adds its own reasons; a name means one thing everywhere."""
    for name, reason in reasons.items():
        if REASONS.get(name, reason) != reason:
            raise ValueError(f"failure reason {name!r} registered twice with different meanings")
        REASONS[name] = reason


def unregister_reasons(names: list[str]) -> None:
    for name in names:
        REASONS.pop(name, None)


@dataclass(frozen=True, slots=True)
class Rules:
    """What a prober tells the classifier: its phases' timeout reasons and its own exception types."""

    timeout_reasons: Mapping[str, str] = field(default_factory=dict)
    # (exception type, reason), most specific first: protocol errors of the prober's own parsers.
    errors: tuple[tuple[type[BaseException], str], ...] = ()


class ProbeFailure(Exception):
    """Raised by probers for failures they detect themselves."""

    def __init__(self, reason: str, message: str, phase: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.phase = phase


class DeadlineExceeded(Exception):
    """The probe's overall deadline ran out (raised by the engine, not a prober)."""


_NO_RULES = Rules()


def classify(exc: BaseException, phase: str, rules: Rules = _NO_RULES) -> Failure:
    """Map an exception raised while in ``phase`` to the failure it means, given the prober's ``rules``."""
    if isinstance(exc, ProbeFailure):
        return Failure(exc.phase or phase, exc.reason, exc.message)
    if isinstance(exc, TargetForbidden):
        return Failure("connect", "target_forbidden", str(exc))
    for kind, reason in rules.errors:
        if isinstance(exc, kind):
            return Failure(phase, reason, str(exc) or type(exc).__name__)
    if isinstance(exc, (TimeoutError, DeadlineExceeded)):
        if isinstance(exc, DeadlineExceeded):
            which = "overall probe deadline"
        elif exc.errno == errno.ETIMEDOUT:
            which = "the kernel gave up, e.g. SYN retries exhausted"
        else:
            which = f"{phase} phase limit"
        return Failure(phase, _timeout_reason(phase, rules), f"timed out in phase {phase} ({which}){_detail(exc)}")
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno in _EXHAUSTED_ERRNOS:
        return Failure(phase, "resource_exhausted", f"local resource exhausted: {exc.strerror or exc}")
    if phase == "dns":
        dns_failure = _classify_dns(exc)
        if dns_failure is not None:
            return dns_failure
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_CODE_REASON.get(exc.verify_code, "tls_cert_untrusted")
        return Failure("tls", reason, f"certificate verification failed: {exc.verify_message} (code {exc.verify_code})")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        text = f"{exc.reason or ''} {exc}".upper()
        if any(marker in text for marker in _VERSION_MARKERS):
            return Failure(phase, "tls_protocol_version", f"no common TLS version: {exc}")
        if phase == "tls":
            return Failure(phase, "tls_handshake_error", f"TLS handshake failed: {exc}")
        return Failure(phase, "protocol_error", f"TLS error after the handshake: {exc}")
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        code = exc.errno
        if code is None and isinstance(exc, ConnectionError):
            # asyncio's own "connection lost" (no errno): sslproto raises a bare
            # ConnectionResetError when the peer sends a FIN mid-handshake.
            # That is a hang-up, not a TCP reset.
            return _closed(phase, exc)
        if code == errno.ECONNREFUSED:
            return Failure(phase, "connect_refused", f"connection refused{_detail(exc)}")
        if code in _UNREACHABLE_ERRNOS:
            return Failure(phase, "connect_unreachable", f"{exc.strerror or exc}")
        if code in _RESET_ERRNOS:
            return _reset(phase, exc)
    if isinstance(exc, asyncio.LimitOverrunError):
        return Failure(phase, "protocol_error", f"line longer than {exc.consumed} bytes without a line end")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError)):  # EOFError: asyncio.IncompleteReadError
        return _closed(phase, exc)
    return Failure(phase, "internal_error", f"{type(exc).__name__}: {exc}")


def _timeout_reason(phase: str, rules: Rules) -> str:
    return rules.timeout_reasons.get(phase) or _PHASE_TIMEOUT_REASON.get(phase, "probe_timeout")


def _closed(phase: str, exc: BaseException) -> Failure:
    """The peer hung up (FIN, not a reset)."""
    if phase == "tls":
        return Failure("tls", "tls_handshake_error", f"server closed the connection during the TLS handshake{_detail(exc)}")
    return Failure(phase, "connection_reset", f"peer closed the connection in phase {phase}{_detail(exc)}")


def _reset(phase: str, exc: BaseException) -> Failure:
    if phase in ("connect", "tls"):
        return Failure(phase, "connect_reset", f"connection reset by peer before the handshake completed{_detail(exc)}")
    return Failure(phase, "connection_reset", f"connection reset by peer in phase {phase}{_detail(exc)}")


def _classify_dns(exc: BaseException) -> Failure | None:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return Failure("dns", "dns_nxdomain", str(exc))
    if isinstance(exc, dns.resolver.NoAnswer):
        return Failure("dns", "dns_no_address", str(exc))
    if isinstance(exc, dns.resolver.NoNameservers):
        return Failure("dns", "dns_servfail", str(exc))
    if isinstance(exc, dns.exception.Timeout):
        return Failure("dns", "dns_timeout", str(exc))
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_NONAME:
            return Failure("dns", "dns_nxdomain", f"system resolver: {exc.strerror}")
        if exc.errno in (getattr(socket, "EAI_NODATA", -5), getattr(socket, "EAI_ADDRFAMILY", -9)):
            return Failure("dns", "dns_no_address", f"system resolver: {exc.strerror}")
        if exc.errno == socket.EAI_AGAIN:
            # glibc reports SERVFAIL and an unanswered query alike as EAI_AGAIN.
            return Failure("dns", "dns_servfail", f"system resolver: {exc.strerror} (SERVFAIL or no answer)")
        return Failure("dns", "dns_servfail", f"system resolver: {exc.strerror}")
    if isinstance(exc, NoAddressError):
        return Failure("dns", "dns_no_address", str(exc))
    return None


def _detail(exc: BaseException) -> str:
    text = str(exc)
    return f": {text}" if text else ""
