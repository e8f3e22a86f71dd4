"""The dns prober: one query to the target server, its rcode and record sections checked (blackbox's dns module).

The target is the DNS server (``host``, ``host:port``; port 53, or 853 with
``dns_over_tls``). Phases: dns (resolving the server's own name, absent for
an IP literal), connect and tls (TCP and DNS-over-TLS only) and query (the
query written → the matching response read). Message encoding is dnspython's;
the sockets are ours, so each phase is timed on its own and the SSRF guard
sees the address. A record is matched in Go's text form (``name<TAB>ttl<TAB>
class<TAB>type<TAB>rdata``, miekg/dns's ``RR.String()``), so a blackbox
``validate_*_rrs`` regexp means what it meant there.
"""
from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..failures import ProbeFailure, Reason
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..net.resolve import is_ip
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, brief, join_host_port, parse_ip_protocol
from .base import CONNECT, DNS, TLS, PhaseSpec, ProbeContext, Prober, register, source_ip_address, tls_section
from .connect import check_source_family, open_connection, peer_address, start_tls, target_host_port

T = TypeVar("T")
MAX_UDP_RESPONSE = 65535
MAX_STRAY_DATAGRAMS = 64  # datagrams that are not our answer, before the probe gives up on the socket

REASONS = {
    "dns_rcode": Reason("query", "the server answered with an rcode not in valid_rcodes (default: NOERROR only)",
                        "record deleted (NXDOMAIN), broken zone or DNSSEC (SERVFAIL), ACL (REFUSED)"),
    "dns_rr_mismatch": Reason("query", "a record section failed a validate_answer_rrs / validate_authority_rrs / "
                              "validate_additional_rrs regexp check (the message names the section and the regexp)",
                              "record changed or removed, wrong view, hijacked answer"),
    "dns_query_timeout": Reason("query", "no answer to the query before the deadline",
                                "server down, UDP dropped by a firewall, response rate limiting"),
}

_CHECKS = ("fail_if_matches_regexp", "fail_if_all_match_regexp", "fail_if_not_matches_regexp", "fail_if_none_matches_regexp")
_SECTIONS = (("answer", "validate_answer_rrs"), ("authority", "validate_authority_rrs"), ("additional", "validate_additional_rrs"))


@dataclass(frozen=True, slots=True)
class RRValidator:
    fail_if_matches_regexp: tuple[re.Pattern[str], ...] = ()
    fail_if_all_match_regexp: tuple[re.Pattern[str], ...] = ()
    fail_if_not_matches_regexp: tuple[re.Pattern[str], ...] = ()
    fail_if_none_matches_regexp: tuple[re.Pattern[str], ...] = ()

    def problem(self, records: list[str]) -> str | None:
        """Why ``records`` fail these checks (blackbox's validRRs, in its order), or None."""
        if not records and self.fail_if_not_matches_regexp:
            return "fail_if_not_matches_regexp is set but the section is empty"
        if not records and self.fail_if_none_matches_regexp:
            return "fail_if_none_matches_regexp is set but the section is empty"
        for rr in records:
            for rx in self.fail_if_matches_regexp:
                if rx.search(rr):
                    return f"record {rr!r} matched fail_if_matches_regexp {rx.pattern!r}"
            for rx in self.fail_if_not_matches_regexp:
                if not rx.search(rr):
                    return f"record {rr!r} did not match fail_if_not_matches_regexp {rx.pattern!r}"
        for rx in self.fail_if_all_match_regexp:
            if records and all(rx.search(rr) for rr in records):
                return f"every record matched fail_if_all_match_regexp {rx.pattern!r}"
        if self.fail_if_none_matches_regexp and not any(rx.search(rr) for rr in records
                                                         for rx in self.fail_if_none_matches_regexp):
            return "no record matched any fail_if_none_matches_regexp"
        return None


@dataclass(frozen=True, slots=True)
class DNSProbeConfig:
    query_name: str = "."
    query_type: dns.rdatatype.RdataType = dns.rdatatype.ANY
    query_class: dns.rdataclass.RdataClass = dns.rdataclass.IN
    transport_protocol: str = "udp"
    recursion_desired: bool = True
    valid_rcodes: tuple[int, ...] = (dns.rcode.NOERROR,)
    validators: tuple[RRValidator, RRValidator, RRValidator] = (RRValidator(), RRValidator(), RRValidator())
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True
    source_ip_address: str | None = None
    dns_over_tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True, slots=True)
class DNSDetails(Details):
    query_succeeded: bool = False
    rcode: str | None = None
    answer_rrs: int = 0
    authority_rrs: int = 0
    additional_rrs: int = 0
    serial: int | None = None  # the SOA serial, for query_type SOA

    def summary(self) -> str:
        if not self.query_succeeded:
            return "DNS no answer"
        return (f"DNS {self.rcode}  answer {self.answer_rrs}  authority {self.authority_rrs}  additional {self.additional_rrs}"
                + (f"  serial {self.serial}" if self.serial is not None else ""))


def _validator(f: Fields) -> RRValidator:
    v = RRValidator(*(f.regexes(key) for key in _CHECKS))
    f.done()
    return v


def _enum(f: Fields, key: str, from_text: Callable[[str], T], default: T) -> T:
    text = f.get(key, str, None)
    if text is None or text == "":
        return default
    try:
        return from_text(text)
    except (dns.exception.DNSException, ValueError):
        raise ConfigError(f"{f.p(key)}: {key.replace('_', ' ')} {brief(text)} is not valid") from None


def go_text(rrset: dns.rrset.RRset) -> list[str]:
    """Each record as miekg/dns prints it (blackbox matches its regexps against that)."""
    head = f"{rrset.name.to_text()}\t{rrset.ttl}\t{dns.rdataclass.to_text(rrset.rdclass)}\t{dns.rdatatype.to_text(rrset.rdtype)}\t"
    return [head + rd.to_text() for rd in rrset]


class DNSProber(Prober):
    name = "dns"
    phases = (DNS, CONNECT, TLS,
              PhaseSpec("query", "DNS query", "query written → the matching response read (UDP datagram, or "
                        "length-prefixed over TCP/TLS)", timeout_reason="dns_query_timeout", limitable=True))
    reasons = REASONS

    def parse(self, f: Fields, module: str) -> DNSProbeConfig:
        present = bool(f.raw)
        proto, fallback = parse_ip_protocol(f)
        name_text = f.get("query_name", str, None)
        if present and not name_text:
            raise ConfigError(f"{f.p('query_name')}: required (the name to query)")
        try:
            qname = dns.name.from_text(name_text or ".").to_text()
        except dns.exception.DNSException as exc:
            raise ConfigError(f"{f.p('query_name')}: {brief(name_text)} is not a valid DNS name: {exc}") from None
        transport = f.get("transport_protocol", str, None) or "udp"
        if transport not in ("udp", "tcp"):
            raise ConfigError(f"{f.p('transport_protocol')}: must be udp or tcp, got {brief(transport)}")
        rcodes = []
        for i, text in enumerate(f.list_of("valid_rcodes", str)):
            try:
                rcodes.append(int(dns.rcode.from_text(text)))
            except (dns.exception.DNSException, ValueError):
                raise ConfigError(f"{f.p('valid_rcodes')}[{i}]: unknown rcode {brief(text)}") from None
        validators = tuple(_validator(f.sub(key)) for _, key in _SECTIONS)
        cfg = DNSProbeConfig(
            query_name=qname,
            query_type=_enum(f, "query_type", dns.rdatatype.from_text, dns.rdatatype.ANY),
            query_class=_enum(f, "query_class", dns.rdataclass.from_text, dns.rdataclass.IN),
            transport_protocol=transport,
            recursion_desired=f.get("recursion_desired", bool, True),
            valid_rcodes=tuple(rcodes) or (dns.rcode.NOERROR,),
            validators=validators,  # type: ignore[arg-type]
            preferred_ip_protocol=proto, ip_protocol_fallback=fallback,
            source_ip_address=source_ip_address(f),
            dns_over_tls=f.get("dns_over_tls", bool, False),
            tls_config=tls_section(f),
        )
        f.done()
        if cfg.dns_over_tls and cfg.transport_protocol != "tcp":
            raise ConfigError(f"{f.p('dns_over_tls')}: DNS over TLS needs transport_protocol: tcp")
        return cfg

    def check_target(self, target: str) -> None:
        target_host_port(target, 53)

    def expected_phases(self, target: str, settings: DNSProbeConfig) -> tuple[str, ...]:
        try:
            host, _ = target_host_port(target, 53)
        except ProbeFailure:
            return ()
        reached = {"dns": not is_ip(host), "connect": settings.transport_protocol == "tcp",
                   "tls": settings.dns_over_tls}
        return tuple(p.name for p in self.phases if reached.get(p.name, True))

    async def probe(self, ctx: ProbeContext, target: str, settings: DNSProbeConfig) -> None:
        cfg = settings
        host, port = target_host_port(target, 853 if cfg.dns_over_tls else 53)
        query = dns.message.make_query(cfg.query_name, cfg.query_type, cfg.query_class)
        if not cfg.recursion_desired:
            query.flags &= ~dns.flags.RD
        ctx.details = DNSDetails()
        if cfg.transport_protocol == "udp":
            ip, family, port = await peer_address(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
            check_source_family(cfg.source_ip_address, family)
            ctx.log("querying %s over udp: %s %s %s", join_host_port(ip, port), cfg.query_name,
                    dns.rdataclass.to_text(cfg.query_class), dns.rdatatype.to_text(cfg.query_type))
            response = await ctx.phase("query", _udp_exchange(query, ip, port, family, cfg.source_ip_address))
        else:
            conn = await open_connection(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback,
                                         cfg.source_ip_address)
            try:
                if cfg.dns_over_tls:
                    await start_tls(ctx, conn, host, cfg.tls_config)
                wire = query.to_wire()
                conn.write(struct.pack("!H", len(wire)) + wire)

                async def exchange() -> bytes:
                    await conn.drain()
                    (length,) = struct.unpack("!H", await conn.readexactly(2))
                    return await conn.readexactly(length)

                parsed = _parse_response(query, await ctx.phase("query", exchange()))
            finally:
                conn.close()
            if parsed is None:
                raise ProbeFailure("protocol_error", "the server's answer over TCP is not a response to the query", phase="query")
            response = parsed
        _check(ctx, cfg, response)

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        d = result.details if isinstance(result.details, DNSDetails) else DNSDetails()
        phases = result.total_phases()
        yield _DURATION, [(text, sum([phases.get(p, 0.0) for p in ours])) for text, ours in _BLACKBOX_PHASES]
        yield _ANSWER, float(d.answer_rrs)
        yield _AUTHORITY, float(d.authority_rrs)
        yield _ADDITIONAL, float(d.additional_rrs)
        yield _SUCCEEDED, 1.0 if d.query_succeeded else 0.0
        if d.serial is not None:
            yield _SERIAL, float(d.serial)


def _parse_response(query: dns.message.Message, wire: bytes) -> dns.message.Message | None:
    try:
        response = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    return response if query.is_response(response) else None


async def _udp_exchange(query: dns.message.Message, ip: str, port: int, family: int, source: str | None) -> dns.message.Message:
    """Send the query from a connected UDP socket; the first datagram that answers it (others are skipped, bounded)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind((source, 0))
        await loop.sock_connect(sock, (ip, port))  # connected: the kernel drops datagrams from anyone else
        await loop.sock_sendall(sock, query.to_wire())
        for _ in range(MAX_STRAY_DATAGRAMS):
            response = _parse_response(query, await loop.sock_recv(sock, MAX_UDP_RESPONSE))
            if response is not None:
                return response
        raise ProbeFailure("protocol_error", f"{MAX_STRAY_DATAGRAMS} datagrams from the server, none a response to the query")
    finally:
        sock.close()


def _check(ctx: ProbeContext, cfg: DNSProbeConfig, response: dns.message.Message) -> None:
    sections = (response.answer, response.authority, response.additional)
    texts = [[rr for rrset in section for rr in go_text(rrset)] for section in sections]
    # miekg/dns counts the EDNS OPT pseudo-record in the additional section (dnspython keeps it apart).
    additional = len(texts[2]) + (1 if response.opt is not None else 0)
    serial = None
    if cfg.query_type == dns.rdatatype.SOA:
        serial = next((int(rd.serial) for rrset in response.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset), None)
    rcode = dns.rcode.to_text(response.rcode())
    ctx.details = DNSDetails(query_succeeded=True, rcode=rcode, answer_rrs=len(texts[0]), authority_rrs=len(texts[1]),
                             additional_rrs=additional, serial=serial)
    ctx.log("answer: rcode %s, %d answer, %d authority, %d additional records", rcode, len(texts[0]), len(texts[1]), additional)
    if response.rcode() not in cfg.valid_rcodes:
        valid = ", ".join(dns.rcode.to_text(c) for c in cfg.valid_rcodes)  # type: ignore[arg-type]
        raise ProbeFailure("dns_rcode", f"rcode {rcode} is not one of the valid rcodes ({valid})", phase="query")
    for (section, key), records, validator in zip(_SECTIONS, texts, cfg.validators):
        problem = validator.problem(records)
        if problem is not None:
            ctx.failed_due_to_regex = True
            raise ProbeFailure("dns_rr_mismatch", f"{key}: {problem}", phase="query")


# blackbox's probe_dns_duration_seconds phases, from ours (connect: TCP connect and, for DoT, the TLS handshake).
_BLACKBOX_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("resolve", ("dns",)), ("connect", ("connect", "tls")), ("request", ("query",))))
_DURATION = ProbeFamily("probe_dns_duration_seconds", "Duration of DNS request by phase")
_ANSWER = ProbeFamily("probe_dns_answer_rrs", "Returns number of entries in the answer resource record list")
_AUTHORITY = ProbeFamily("probe_dns_authority_rrs", "Returns number of entries in the authority resource record list")
_ADDITIONAL = ProbeFamily("probe_dns_additional_rrs", "Returns number of entries in the additional resource record list")
_SUCCEEDED = ProbeFamily("probe_dns_query_succeeded", "Displays whether or not the query was executed successfully")
_SERIAL = ProbeFamily("probe_dns_serial", "Returns the serial number of the zone")

register(DNSProber())
