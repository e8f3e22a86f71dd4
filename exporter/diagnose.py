"""``connhealth diagnose URL``: seed 002's decision tree from symptom to cause, made executable.

Each step is a real probe (the same probers, phases and failure reasons as
everywhere else) and walks the tree from the bottom of the stack up:

1. DNS through the system resolver, and through ``--nameserver`` when given;
2. TCP connect: SYN retransmits, a connect time near 1 s or 3 s (lost SYNs);
3. TLS (https): full handshake vs a resumed one;
4. keep-alive: two requests on one connection, then reuse after ``--idle``
   (the client's idle timeout): a server that closes first is the
   "connection reset on reuse" trap (not for an event stream);
5. for an event stream (``--stream``): heartbeat gaps.

A step that fails outright ends the walk (nothing above it can be judged);
a problem that does not stop the connection (lost SYNs, no resumption, an
idle-timeout mismatch) is noted and the walk goes on. The verdict is the first
problem found, the lowest in the stack; every step keeps its evidence.
"""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from .config import ConfigError, Module, parse_config
from .engine import run_probe
from .failures import REASONS
from .net import resolve
from .probers.sse import SSEDetails
from .probers.stream import DEFAULT_SECRET_QUERY_PARAMS, redact_url
from .result import ProbeResult

# A connect this close to 1 s or 3 s (Linux's SYN retransmission times) smells of a lost SYN.
SYN_RTO_MARKS = (1.0, 3.0)
SYN_RTO_TOLERANCE = 0.25


@dataclass(frozen=True, slots=True)
class Options:
    url: str
    nameservers: tuple[tuple[str, int], ...] = ()
    idle: float = 10.0  # the client's idle timeout to compare the server's with
    stream: bool = False
    hold: float = 10.0
    heartbeat_interval: float = 15.0
    timeout: float = 10.0  # per step, beyond the idle/hold the step needs
    insecure: bool = False
    ca_file: str | None = None


@dataclass(slots=True)
class Step:
    name: str
    status: str  # "ok" | "problem" | "failed" | "skipped"
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Diagnosis:
    url: str
    steps: list[Step] = field(default_factory=list)

    @property
    def verdict(self) -> Step | None:
        return next((s for s in self.steps if s.status in ("problem", "failed")), None)

    def to_dict(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "url": self.url,
            "path": [dataclasses.asdict(s) for s in self.steps],
            "verdict": {"healthy": verdict is None, "step": verdict.name if verdict else None,
                        "summary": verdict.summary if verdict else "no problem found on the path"},
        }

    def render(self) -> str:
        out = [f"connhealth diagnose {self.url}", ""]
        for i, step in enumerate(self.steps, 1):
            mark = {"ok": "ok", "problem": "PROBLEM", "failed": "FAILED", "skipped": "skipped"}[step.status]
            out.append(f" {i}. {step.name:<11} {mark:<8} {step.summary}")
            for key, value in step.evidence.items():
                out.append(f"      {key}: {value}")
        verdict = self.verdict
        out.append("")
        out.append(f"Verdict: {verdict.summary}" if verdict else "Verdict: healthy, no problem found on the path.")
        return "\n".join(out)


def _failure(result: ProbeResult) -> str:
    f = result.failure
    assert f is not None
    reason = REASONS.get(f.reason)
    return f"{f.reason} in phase {f.phase}: {f.message}" + (f" (typical cause: {reason.typical_cause})" if reason else "")


class _Walk:
    def __init__(self, opts: Options, probe: Callable[[str, Module], Awaitable[ProbeResult]]) -> None:
        self.opts = opts
        self.probe = probe
        # As every output shows a target: userinfo and secret query values masked.
        shown = redact_url(opts.url, DEFAULT_SECRET_QUERY_PARAMS)
        self.d = Diagnosis(shown)
        parts = urlsplit(opts.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown!r} is not an http:// or https:// URL")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        hostport = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{hostport}:{self.port}"
        self.tls_config: dict[str, Any] = {}
        if opts.ca_file:
            self.tls_config["ca_file"] = opts.ca_file
        if opts.insecure:
            self.tls_config["insecure_skip_verify"] = True

    def module(self, prober: str, extra_time: float = 0.0, **section: Any) -> Module:
        """A module as a user would write it (deadline: --timeout plus ``extra_time``); with --nameserver every
        step resolves through it."""
        raw: dict[str, Any] = {"prober": prober, "timeout": f"{self.opts.timeout + extra_time:g}s", **section}
        if self.opts.nameservers:
            raw["resolver"] = {"nameservers": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.opts.nameservers]}
        return parse_config(yaml.safe_dump({"modules": {"d": raw}}), "diagnose", with_builtins=False).modules["d"]

    def add(self, name: str, status: str, summary: str, **evidence: Any) -> bool:
        """Record a step; False when the walk must stop here."""
        self.d.steps.append(Step(name, status, summary, {k: v for k, v in evidence.items() if v is not None}))
        return status != "failed"

    async def run(self) -> Diagnosis:
        for step in (self.dns, self.connect, self.tls_step, self.keepalive, self.stream):
            if not await step():
                break
        return self.d

    async def dns(self) -> bool:
        if resolve.literal(self.host) is not None:
            return self.add("DNS", "skipped", f"{self.host} is an IP address")
        answers: dict[str, Any] = {}
        errors: dict[str, str] = {}
        resolvers = [("system resolver", ()), *((f"nameserver {h}:{p}", ((h, p),)) for h, p in self.opts.nameservers)]
        families = [socket.AF_INET, socket.AF_INET6]
        for label, servers in resolvers:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self.opts.timeout):  # getaddrinfo has no deadline of its own
                    ip, _ = await resolve.resolve(self.host, families, servers, None, self.opts.timeout)
            except Exception as exc:  # noqa: BLE001 - the failure is the evidence
                errors[label] = f"{type(exc).__name__}: {exc}"
                continue
            answers[label] = f"{ip} in {(time.perf_counter() - start) * 1000:.1f} ms"
        evidence = {**answers, **{k: f"failed: {v}" for k, v in errors.items()}}
        if not answers:
            return self.add("DNS", "failed", f"{self.host} does not resolve: {'; '.join(errors.values())}", **evidence)
        ips = {v.split()[0] for v in answers.values()}
        if errors:
            return self.add("DNS", "problem", f"resolvers disagree: {', '.join(errors)} failed, others answered", **evidence)
        if len(ips) > 1:
            return self.add("DNS", "problem", f"resolvers answer differently ({', '.join(sorted(ips))}): split horizon or stale "
                            "records", **evidence)
        return self.add("DNS", "ok", f"{self.host} resolves to {ips.pop()}", **evidence)

    async def connect(self) -> bool:
        result = await self.probe(self.address, self.module("tcp", tcp={"preferred_ip_protocol": "ip4"}))
        seconds = result.phases.get("connect")
        retransmits = result.tcp.retransmits if result.tcp is not None else None
        evidence = {"connect": f"{seconds * 1000:.1f} ms" if seconds is not None else None,
                    "SYN retransmits": retransmits, "peer": result.peer.ip if result.peer else None}
        if result.failure is not None:
            return self.add("connect", "failed", _failure(result), **evidence)
        assert seconds is not None
        near = next((mark for mark in SYN_RTO_MARKS if abs(seconds - mark) <= SYN_RTO_TOLERANCE), None)
        if retransmits:
            return self.add("connect", "problem", f"{retransmits} SYN retransmit(s): SYNs are being lost on the path "
                            f"(connect took {seconds:.3f}s)", **evidence)
        if near is not None:
            return self.add("connect", "problem", f"connect took {seconds:.3f}s, near the {near:g}s SYN retransmission time: "
                            "a lost SYN or a full accept queue", **evidence)
        return self.add("connect", "ok", f"connected in {seconds * 1000:.1f} ms, no SYN retransmits", **evidence)

    async def tls_step(self) -> bool:
        if not self.tls:
            return self.add("TLS", "skipped", "plain http")
        module = self.module("tcp", tcp={"tls": True, "tls_config": {**self.tls_config, "server_name": self.host}},
                             tls_resumption={"check": True})
        result = await self.probe(self.address, module)
        if result.failure is not None:
            return self.add("TLS", "failed", _failure(result))
        r = result.resumption
        assert r is not None and result.tls is not None
        evidence = {"version": result.tls.version, "full handshake": f"{r.full_seconds * 1000:.1f} ms",
                    "resumed handshake": f"{r.resumed_seconds * 1000:.1f} ms" if r.resumed_seconds is not None else None,
                    "session offered": r.offered}
        if not r.resumed:
            return self.add("TLS", "problem", "session resumption does not work: every new connection pays a full handshake "
                            "(on TLS 1.2 twice the round trips)", **evidence)
        return self.add("TLS", "ok", "handshake fine, sessions resume", **evidence)

    async def keepalive(self) -> bool:
        if self.opts.stream:
            return self.add("keep-alive", "skipped", "an event stream keeps its one response open: no reuse to check")
        http: dict[str, Any] = {"valid_status_codes": list(range(100, 600))}
        if self.tls_config:
            http["tls_config"] = self.tls_config
        quick = await self.probe(self.opts.url, self.module("http", http={**http, "keepalive": {"idle": "50ms"}}))
        if quick.failure is not None and quick.keepalive is None:
            return self.add("keep-alive", "failed", _failure(quick))
        ka = quick.keepalive
        assert ka is not None
        headers = {"Connection": ka.connection_header, "Keep-Alive": ka.keep_alive_header}
        if not ka.reused:
            return self.add("keep-alive", "problem", "two requests on one connection fail: the server does not keep connections "
                            f"alive ({ka.ended_by}); every request pays connect" + (" and TLS" if self.tls else ""), **headers)
        idle = self.opts.idle
        result = await self.probe(self.opts.url, self.module("http", idle, http={**http, "keepalive": {"idle": f"{idle:g}s"}}))
        ka = result.keepalive
        if ka is None:
            return self.add("keep-alive", "failed", _failure(result), **headers)
        evidence = {**headers, "client idle": f"{idle:g}s", "server ended it": ka.ended_by,
                    "server idle": f"{ka.server_idle_seconds:.3f}s" if ka.server_idle_seconds is not None else None}
        if not ka.reused:
            after = f"after {ka.server_idle_seconds:.3f}s" if ka.server_idle_seconds is not None else "before then"
            return self.add("keep-alive", "problem", f"idle-timeout mismatch: the server closes idle connections {after} "
                            f"({ka.ended_by.upper()}), shorter than the client's {idle:g}s idle: a client reusing such a "
                            "connection gets 'connection reset'. Make the client's idle timeout shorter than the server's "
                            "(or the server's longer)", **evidence)
        return self.add("keep-alive", "ok", f"two requests on one connection, and reuse after {idle:g}s idle, work", **evidence)

    async def stream(self) -> bool:
        if not self.opts.stream:
            return self.add("stream", "skipped", "not an event stream (use --stream)")
        sse: dict[str, Any] = {"hold": f"{self.opts.hold:g}s", "heartbeat_interval": f"{self.opts.heartbeat_interval:g}s"}
        if self.tls_config:
            sse["tls_config"] = self.tls_config
        result = await self.probe(self.opts.url, self.module("sse", self.opts.hold, sse=sse))
        d = result.details if isinstance(result.details, SSEDetails) else None
        evidence = {"events": d.events, "heartbeats": d.heartbeats,
                    "max gap": f"{d.max_gap_seconds:.3f}s" if d.max_gap_seconds is not None else None} if d else {}
        if result.failure is not None:
            return self.add("stream", "failed", _failure(result), **evidence)
        return self.add("stream", "ok", f"held {self.opts.hold:g}s, gaps within the heartbeat promise", **evidence)


async def diagnose(opts: Options, probe: Callable[[str, Module], Awaitable[ProbeResult]] | None = None) -> Diagnosis:
    """Walk the tree for ``opts.url``; ``probe`` runs one probe (default: the engine)."""
    return await _Walk(opts, probe or _run).run()


async def _run(target: str, module: Module) -> ProbeResult:
    return await run_probe(target, module)


def main(opts: Options, as_json: bool) -> tuple[int, str]:
    """(exit code, text) for the CLI: 0 healthy, 1 a problem was found."""
    import json

    try:
        d = asyncio.run(diagnose(opts))
    except ValueError as exc:  # not a URL
        raise ConfigError(f"diagnose: {exc}") from None
    return (0 if d.verdict is None else 1), (json.dumps(d.to_dict(), indent=2) if as_json else d.render())
