"""Certificate factory for the demo and the tests: real X.509, written to disk.

TLS failure attribution (expired, not-yet-valid, untrusted, hostname mismatch,
incomplete chain, old protocol versions) can only be tested honestly against a
real OpenSSL handshake, and OpenSSL wants files. So every certificate issued
here is written as PEM next to its key, and ``server_context`` turns an
``Issued`` into a listening-side ``ssl.SSLContext``.

Keys are EC P-256: generating them takes microseconds, where RSA-2048 costs
tens of milliseconds each, which adds up over a test suite that issues
dozens of certificates.

The certificates are deliberately "strict-clean" (SKI/AKI present, critical
basicConstraints, keyUsage on CAs, EKU on leaves) so that they verify under
OpenSSL's X509_STRICT mode too (the default in ``ssl.create_default_context``
from Python 3.13 on). A test that wants a broken certificate should get
exactly the one defect it asked for, not an accidental second one.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "CertFactory", "server_context"]

_ORG = "connhealth tests"

# Default lifetimes. The one-day back-dating of notBefore keeps freshly issued
# certificates valid on hosts whose clock is slightly behind (CI runners,
# containers), which would otherwise look like "not yet valid".
_LEAF_BACKDATE = timedelta(days=1)
_LEAF_LIFETIME = timedelta(days=30)
_CA_LIFETIME = timedelta(days=3650)
# When the caller pins only one end of the validity window and the default
# for the other end would produce an empty/negative window, the other end is
# placed this far away instead (so "not_after=yesterday" just works).
_FALLBACK_SPAN = timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """One issued certificate plus its key, in memory and on disk.

    ``cert_file`` is what a server presents: this certificate followed by the
    intermediates needed to reach the root (never the self-signed root
    itself, as real servers don't send it). For a root CA it holds just the
    root, which is also what a client loads as its trust anchor.
    """

    cert_pem: bytes  # this certificate only
    key_pem: bytes  # unencrypted PKCS#8
    cert_file: str  # PEM: this certificate + intermediates (the chain to present)
    key_file: str
    # Extras beyond the four core fields; defaulted so the core can still be
    # constructed positionally.
    chain_pem: bytes = b""  # exact content of cert_file
    is_ca: bool = False
    self_signed: bool = False
    name: str = ""
    # Not part of equality/repr: the live objects, needed to sign children.
    certificate: x509.Certificate | None = field(default=None, compare=False, repr=False)
    private_key: ec.EllipticCurvePrivateKey | None = field(default=None, compare=False, repr=False)

    @property
    def not_valid_before(self) -> datetime:
        return self._cert().not_valid_before_utc

    @property
    def not_valid_after(self) -> datetime:
        return self._cert().not_valid_after_utc

    def _cert(self) -> x509.Certificate:
        # Issued can be rebuilt from PEM alone (e.g. by a caller), so fall
        # back to parsing rather than assuming the object is attached.
        return self.certificate or x509.load_pem_x509_certificate(self.cert_pem)


def _utc(value: datetime) -> datetime:
    # Naive datetimes are taken as UTC (that is what X.509 stores); aware ones
    # are converted so comparisons below are meaningful.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _window(
    not_before: datetime | None,
    not_after: datetime | None,
    *,
    lifetime: timedelta,
) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    nb = _utc(not_before) if not_before is not None else None
    na = _utc(not_after) if not_after is not None else None
    if nb is None and na is None:
        return now - _LEAF_BACKDATE, now + lifetime
    if nb is None:
        assert na is not None
        nb = now - _LEAF_BACKDATE
        if nb >= na:  # e.g. an expired certificate: not_after in the past
            nb = na - _FALLBACK_SPAN
        return nb, na
    if na is None:
        na = now + lifetime
        if na <= nb:  # e.g. a not-yet-valid certificate far in the future
            na = nb + _FALLBACK_SPAN
        return nb, na
    if na <= nb:
        raise ValueError(f"not_after ({na}) must be later than not_before ({nb})")
    return nb, na


def _slug(text: str) -> str:
    # File names only need to be recognisable when debugging a failed test.
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "cert"


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


class CertFactory:
    """Issues CAs and leaves into ``directory`` (created if missing).

    File names carry a per-factory sequence number so that issuing the same
    name twice (say, a valid and an expired "localhost") never overwrites a
    file a running server still uses.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()  # factories may be shared by threads (demo)

    # -- public -----------------------------------------------------------

    def ca(
        self,
        name: str = "connhealth test CA",
        *,
        issuer: Issued | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        """A CA certificate: self-signed root, or an intermediate under ``issuer``."""
        if issuer is not None and not issuer.is_ca:
            raise ValueError(f"issuer {issuer.name!r} is not a CA")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = self._name(name)
        nb, na = _window(not_before, not_after, lifetime=_CA_LIFETIME)
        builder = (
            self._base(subject, key, issuer, nb, na)
            # Root: unlimited depth. Intermediate: may only sign leaves, the
            # way public intermediates are usually constrained.
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
                critical=True,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        return self._finish(builder, key, issuer, name=name, is_ca=True, include_chain=True)

    def leaf(
        self,
        ca: Issued | None,
        *,
        name: str = "localhost",
        sans: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        include_chain: bool = True,
        client_auth: bool = False,
    ) -> Issued:
        """A server certificate signed by ``ca`` (``None``: self-signed); ``client_auth`` makes it a client's too.

        ``include_chain=False`` leaves the intermediates out of ``cert_file``
        so a server presents an incomplete chain (the classic "works in the
        browser, fails in curl" misconfiguration).
        """
        if ca is not None and not ca.is_ca:
            raise ValueError(f"issuer {ca.name!r} is not a CA")
        if isinstance(sans, str):  # a lone string would be split into letters
            sans = (sans,)
        key = ec.generate_private_key(ec.SECP256R1())
        nb, na = _window(not_before, not_after, lifetime=_LEAF_LIFETIME)
        builder = (
            self._base(self._name(name), key, ca, nb, na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,  # ECDHE-ECDSA: the key signs the handshake
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]
                                                 + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])), critical=False)
        )
        if sans:
            # Clients match hostnames against SANs only (the CN is ignored),
            # so an empty ``sans`` is the way to build a "matches nothing" cert.
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False
            )
        return self._finish(builder, key, ca, name=name, is_ca=False, include_chain=include_chain)

    # -- internals --------------------------------------------------------

    @staticmethod
    def _name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    @staticmethod
    def _base(
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer: Issued | None,
        nb: datetime,
        na: datetime,
    ) -> x509.CertificateBuilder:
        issuer_cert = None if issuer is None else issuer._cert()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if issuer_cert is None else issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        # AKI lets OpenSSL pick the right issuer when several share a subject
        # name (tests issue many "connhealth test CA"s), and strict mode
        # requires it on every non-self-signed certificate.
        if issuer_cert is not None:
            ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        else:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        return builder.add_extension(aki, critical=False)

    def _finish(
        self,
        builder: x509.CertificateBuilder,
        key: ec.EllipticCurvePrivateKey,
        issuer: Issued | None,
        *,
        name: str,
        is_ca: bool,
        include_chain: bool,
    ) -> Issued:
        signing_key = key if issuer is None else self._key_of(issuer)
        cert = builder.sign(signing_key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The chain to present is ours plus the issuer's own presented chain;
        # a root issuer contributes nothing since its chain_pem is only itself
        # and roots are never sent (the client must already have them).
        chain_pem = cert_pem
        if include_chain and issuer is not None and not issuer.self_signed:
            chain_pem += issuer.chain_pem or issuer.cert_pem

        with self._lock:
            seq = next(self._seq)
        stem = self.directory / f"{seq:04d}-{'ca' if is_ca else 'leaf'}-{_slug(name)}"
        cert_file = stem.with_name(stem.name + ".crt")
        key_file = stem.with_name(stem.name + ".key")
        cert_file.write_bytes(chain_pem)
        # 0600 because some TLS stacks refuse world-readable keys, and it is
        # simply the right habit even for throwaway keys.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)

        return Issued(
            cert_pem=cert_pem,
            key_pem=key_pem,
            cert_file=str(cert_file),
            key_file=str(key_file),
            chain_pem=chain_pem,
            is_ca=is_ca,
            self_signed=issuer is None,
            name=name,
            certificate=cert,
            private_key=key,
        )

    @staticmethod
    def _key_of(issued: Issued) -> ec.EllipticCurvePrivateKey:
        if issued.private_key is not None:
            return issued.private_key
        loaded = serialization.load_pem_private_key(issued.key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise TypeError("CertFactory only signs with EC keys")
        return loaded


def _below_tls12(version: ssl.TLSVersion | None) -> bool:
    if version is None:
        return False
    # MINIMUM_SUPPORTED is a sentinel (-2) meaning "as low as OpenSSL goes",
    # i.e. below 1.2; MAXIMUM_SUPPORTED (-1) is the opposite and must not be
    # caught by a plain numeric comparison.
    if version == ssl.TLSVersion.MINIMUM_SUPPORTED:
        return True
    if version == ssl.TLSVersion.MAXIMUM_SUPPORTED:
        return False
    return version < ssl.TLSVersion.TLSv1_2


def server_context(
    issued: Issued,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A listening-side context presenting ``issued.cert_file``.

    Asking for TLS 1.0/1.1 (as min or max) also drops OpenSSL's security
    level to 0: OpenSSL 3 keeps those protocol versions compiled in but
    refuses to negotiate them at the default level 1+ (they need SHA-1
    signatures), so without this an "old server" would simply fail every
    handshake instead of speaking the old version. Note the *client* needs
    the same treatment to actually complete such a handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(issued.cert_file, issued.key_file)
    # Python warns when TLS 1.0/1.1 is set; here the old version is the
    # whole point (simulating a legacy server), so keep test output clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        elif _below_tls12(max_version):
            # Python >= 3.10 sets the floor to TLS 1.2 on every new context,
            # so "max_version=TLSv1" alone would leave an empty version range
            # and fail every handshake; a caller asking for an old-only
            # server means "speak only that", not "speak nothing".
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        if max_version is not None:
            ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    elif _below_tls12(min_version) or _below_tls12(max_version):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx
