"""TLS settings, client contexts (built once per setting) and what a handshake presented."""
from __future__ import annotations

import functools
import hashlib
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..result import Certificate, TLSInfo
from . import resolve

__all__ = [
    "TLS_VERSIONS",
    "TLSConfig",
    "check_server_name",
    "client_context",
    "describe",
    "describe_failure",
    "parse_certificate",
    "tls_info_of",
]

# Config spelling (blackbox's) -> ssl.TLSVersion member name.
TLS_VERSIONS = {"TLS10": "TLSv1", "TLS11": "TLSv1_1", "TLS12": "TLSv1_2", "TLS13": "TLSv1_3"}

_VERSION_NAMES = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}
_DER: int = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: str | None = None  # a TLS_VERSIONS key: "TLS12"
    max_version: str | None = None


def check_server_name(name: str) -> None:
    """ValueError naming what is wrong with a TLS server name (SNI and the name verified): OpenSSL
    would refuse it only at the handshake, as a crash rather than the user's mistake."""
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"{name[:80]!r} contains a space or control character")
    resolve.check_host(name)


def _version(name: str) -> ssl.TLSVersion:
    return ssl.TLSVersion[TLS_VERSIONS[name]]


@functools.lru_cache(maxsize=256)
def client_context(cfg: TLSConfig, alpn: tuple[str, ...] = (), ca_data: bytes | None = None,
                   key_pair: tuple[bytes, bytes] | None = None) -> ssl.SSLContext:
    """One SSLContext per (TLS settings, ALPN, file contents): building one costs ~1 ms, probes reuse it.

    Reuse also matters for resumption: OpenSSL only resumes a session through
    the context that created it. A prober passes the contents of the files the
    settings name (probers/connect.py reads them at probe time through filerefs):
    a file changed in place gives a new context. ``key_pair`` (the certificate and
    key files' bytes) is only part of the key; OpenSSL loads a key pair from its paths.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_data is not None:
        ctx.load_verify_locations(cadata=ca_data.decode("latin-1"))
    elif cfg.ca_file:
        ctx.load_verify_locations(cafile=cfg.ca_file)
    elif not cfg.insecure_skip_verify:
        # Loading the system trust store costs ~60 ms; pointless when nothing is verified.
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cfg.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.min_version:
        if _version(cfg.min_version) < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3's default security level refuses TLS < 1.2 outright.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = _version(cfg.min_version)
    if cfg.max_version:
        ctx.maximum_version = _version(cfg.max_version)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


# Parsing a certificate costs ~100 µs; the same chain comes back every probe.
_CERT_CACHE: OrderedDict[bytes, Certificate] = OrderedDict()
_CERT_CACHE_SIZE = 1024


def parse_certificate(der: bytes) -> Certificate:
    cached = _CERT_CACHE.get(der)
    if cached is not None:
        _CERT_CACHE.move_to_end(der)
        return cached
    cert = x509.load_der_x509_certificate(der)
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san_ext.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san_ext.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        sans = ()
    parsed = Certificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
    )
    _CERT_CACHE[der] = parsed
    if len(_CERT_CACHE) > _CERT_CACHE_SIZE:
        _CERT_CACHE.popitem(last=False)
    return parsed


def _chain_getter(ssl_object: ssl.SSLObject, name: str) -> Any:
    # Python 3.13 made get_unverified_chain/get_verified_chain public; 3.11
    # has them on the private _ssl object.
    return getattr(ssl_object, name, None) or getattr(getattr(ssl_object, "_sslobj", None), name, None)


def _der_list(certs: Any) -> list[bytes]:
    return [c if isinstance(c, bytes) else c.public_bytes(_DER) for c in certs or ()]


def presented_chain(ssl_object: ssl.SSLObject) -> tuple[Certificate, ...]:
    """The chain the server sent, leaf first, as it sent it (verified or not).

    Still readable after a failed verification (the handshake stops after the
    Certificate message was processed). A resumed session has no Certificate
    message: OpenSSL then only knows the leaf, from the session.
    """
    getter = _chain_getter(ssl_object, "get_unverified_chain")
    chain_der = _der_list(getter()) if getter is not None else []
    if not chain_der:
        try:
            leaf = ssl_object.getpeercert(binary_form=True)
        except ValueError:  # no handshake yet
            leaf = None
        if leaf:
            chain_der = [leaf]
    return tuple(parse_certificate(der) for der in chain_der)


def describe(
    ssl_object: ssl.SSLObject,
    server_name: str | None,
    verified: bool,
    *,
    session_offered: bool = False,
    server_hello_seconds: float | None = None,
) -> TLSInfo:
    """A completed handshake. ``verified`` is False when verification was switched off."""
    chain = presented_chain(ssl_object)
    verified_expiry: float | None = None
    if verified:
        getter = _chain_getter(ssl_object, "get_verified_chain")
        verified_der = _der_list(getter()) if getter is not None else []
        if verified_der:
            verified_expiry = min(parse_certificate(der).not_after for der in verified_der)
        elif chain:  # no access to the verified chain: the presented one is the best guess
            verified_expiry = min(c.not_after for c in chain)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return TLSInfo(
        version=_VERSION_NAMES.get(version or "", version),
        cipher=cipher[0] if cipher else None,
        alpn=ssl_object.selected_alpn_protocol(),
        server_name=server_name,
        verification="verified" if verified else "skipped",
        chain=chain,
        verified_chain_expiry=verified_expiry,
        session_offered=session_offered,
        session_reused=ssl_object.session_reused,
        server_hello_seconds=server_hello_seconds,
    )


def describe_failure(
    ssl_object: ssl.SSLObject,
    server_name: str | None,
    error: ssl.SSLCertVerificationError,
    *,
    session_offered: bool = False,
    server_hello_seconds: float | None = None,
) -> TLSInfo:
    """A handshake that failed verification: no version or cipher, but the presented chain
    and OpenSSL's message (blackbox #1119: report the chain and its expiry anyway)."""
    return TLSInfo(
        version=None,
        cipher=None,
        alpn=None,
        server_name=server_name,
        verification="failed",
        chain=presented_chain(ssl_object),
        verified_chain_expiry=None,
        verification_error=error.verify_message or str(error),
        session_offered=session_offered,
        session_reused=False,
        server_hello_seconds=server_hello_seconds,
    )


def tls_info_of(exc: BaseException) -> TLSInfo | None:
    """The TLSInfo a failed verification carries (``Connection.start_tls`` attaches it)."""
    info = getattr(exc, "tls_info", None)
    return info if isinstance(info, TLSInfo) else None
