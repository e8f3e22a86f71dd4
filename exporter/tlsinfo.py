"""TLS client contexts (built once per config) and what a handshake presented."""
from __future__ import annotations

import functools
import hashlib
import ssl
from collections import OrderedDict

from cryptography import x509

from .config import TLSConfig
from .result import Certificate, TLSInfo

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERSION_NAMES = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}


@functools.lru_cache(maxsize=256)
def client_context(cfg: TLSConfig, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """One SSLContext per (tls_config, ALPN): building one costs ~1 ms, probes reuse it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.ca_file:
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
        if _VERSIONS[cfg.min_version] < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3's default security level refuses TLS < 1.2 outright.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = _VERSIONS[cfg.min_version]
    if cfg.max_version:
        ctx.maximum_version = _VERSIONS[cfg.max_version]
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


def describe(ssl_object: ssl.SSLObject, server_name: str | None, verified: bool) -> TLSInfo:
    chain_der: list[bytes] = []
    inner = getattr(ssl_object, "_sslobj", None)
    # Python 3.13 made the presented chain public (get_unverified_chain); 3.11
    # has it on the private object. Fall back to the leaf alone.
    getter = getattr(ssl_object, "get_unverified_chain", None) or getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        for cert in getter() or ():
            chain_der.append(cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    else:
        leaf = ssl_object.getpeercert(binary_form=True)
        if leaf:
            chain_der.append(leaf)
    verified_expiry: float | None = None
    verified_getter = getattr(ssl_object, "get_verified_chain", None) or getattr(inner, "get_verified_chain", None)
    if verified and verified_getter is not None:
        verified_der = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                        for c in verified_getter() or ()]
        verified_expiry = min((parse_certificate(der).not_after for der in verified_der), default=None)
    elif verified and chain_der:  # no access to the verified chain: the presented one is the best guess
        verified_expiry = min(parse_certificate(der).not_after for der in chain_der)
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return TLSInfo(
        version=_VERSION_NAMES.get(version or "", version),
        cipher=cipher[0] if cipher else None,
        alpn=ssl_object.selected_alpn_protocol(),
        server_name=server_name,
        verification="verified" if verified else "skipped",
        chain=tuple(parse_certificate(der) for der in chain_der),
        verified_chain_expiry=verified_expiry,
    )
