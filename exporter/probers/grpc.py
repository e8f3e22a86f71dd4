"""The grpc prober: the gRPC health-checking protocol (grpc.health.v1.Health/Check), blackbox's grpc module.

One unary call on a fresh HTTP/2 connection of our own (net/http2.py, h2),
cleartext with prior knowledge or TLS with ALPN h2; the request and response
messages are grpcio-health-checking's protobuf types. The call is ours and
not grpcio's channel so that it goes through the same steps every prober
times (dns, connect, tls, request, first_byte, transfer), the SSRF guard sees
the address connected to, a failed handshake still reports the certificate
chain, ``insecure_skip_verify`` works (grpcio cannot skip verification), and
the exporter process never starts gRPC's C core and its threads (which do
not survive ``fork`` into worker processes). The tests check it against
grpcio's own health server.

The probe succeeds when the server answers grpc-status 0 with SERVING.
The target is ``host:port``, optionally prefixed by ``http://`` or
``https://`` as blackbox accepts (port 80, or 443 with ``tls``).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from ..failures import ProbeFailure, Reason
from ..metrics import ProbeFamily, ProbeSamples, label_text
from ..net import http1
from ..net.http2 import H2Exchange
from ..net.resolve import is_ip
from ..net.tls import TLSConfig
from ..result import Details, ProbeResult
from ..schema import ConfigError, Fields, Secret, join_host_port, parse_ip_protocol, reveal
from .base import CONNECT, CREDENTIAL_HEADERS, DNS, TLS, PhaseSpec, ProbeContext, Prober, register, tls_section
from .connect import open_connection, start_tls, target_host_port
from .http import REASONS as HTTP_REASONS, USER_AGENT

MAX_RESPONSE = 64 << 10  # a HealthCheckResponse is a few bytes
SERVING_STATUSES = tuple(health_pb2.HealthCheckResponse.ServingStatus.keys())  # UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN
# grpc-status codes (google.golang.org/grpc/codes) this prober names itself.
UNAVAILABLE, DEADLINE_EXCEEDED = 14, 4
_CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
               "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
               "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
_PATH = "/grpc.health.v1.Health/Check"

REASONS = {
    "grpc_not_serving": Reason("transfer", "the health service answered, but not SERVING (NOT_SERVING, UNKNOWN or "
                               "SERVICE_UNKNOWN; the message has it)", "service marked down by its own checks, draining, "
                               "dependency failing"),
    "grpc_status": Reason("transfer", "the call ended with a grpc-status other than OK (the message has the code): "
                          "NOT_FOUND for a service the health server does not know, UNIMPLEMENTED without a health service",
                          "wrong service name, health service not registered, auth interceptor (UNAUTHENTICATED)"),
}


@dataclass(frozen=True, slots=True)
class GRPCProbeConfig:
    service: str = ""
    tls: bool = False
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    metadata: tuple[tuple[str, str | Secret], ...] = ()  # credentials (authorization, ...) typed Secret
    preferred_ip_protocol: str = "ip6"
    ip_protocol_fallback: bool = True


@dataclass(frozen=True, slots=True)
class GRPCDetails(Details):
    status_code: int | None = None  # grpc-status; None: the call never got one
    serving_status: str | None = None  # SERVING, NOT_SERVING, ...
    message: str = ""  # grpc-message

    def summary(self) -> str:
        code = "-" if self.status_code is None else _code_name(self.status_code)
        return f"gRPC status {code}  health {self.serving_status or '-'}" + (f"  ({self.message})" if self.message else "")


def _code_name(code: int) -> str:
    return _CODE_NAMES[code] if 0 <= code < len(_CODE_NAMES) else str(code)


def _metadata(f: Fields) -> tuple[tuple[str, str | Secret], ...]:
    """blackbox's metadata (Go's metadata.MD: a name → a list of values; a single string is taken too).

    gRPC metadata travels as HTTP/2 headers: a credential header's value (authorization, cookie) is a Secret.
    """
    out: list[tuple[str, str | Secret]] = []
    for name, raw in f.get("metadata", dict, {}).items():
        path = f"{f.p('metadata')}.{name}"
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"{path}: expected a string or a list of strings")
            key = str(name).lower()  # gRPC metadata keys are lowercase (Go lowercases them too)
            if key.startswith(":") or key.startswith("grpc-"):
                raise ConfigError(f"{path}: reserved name (pseudo-headers and grpc- names belong to the protocol)")
            try:
                http1.validate_header(key, str(value))
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            out.append((key, Secret(str(value)) if key in CREDENTIAL_HEADERS else str(value)))
    return tuple(out)


class GRPCProber(Prober):
    name = "grpc"
    phases = (DNS, CONNECT, TLS,
              PhaseSpec("request", "Request sent", "request bytes handed to the socket → written"),
              PhaseSpec("first_byte", "Server processing", "request written → the response headers",
                        timeout_reason="http_timeout_first_byte", limitable=True),
              PhaseSpec("transfer", "Content transfer", "response headers → the message and trailers (grpc-status)"))
    # gRPC runs over HTTP/2: a server that never answers is the http prober's first-byte timeout.
    reasons = {**REASONS, "http_timeout_first_byte": HTTP_REASONS["http_timeout_first_byte"]}

    def parse(self, f: Fields, module: str) -> GRPCProbeConfig:
        proto, fallback = parse_ip_protocol(f)
        cfg = GRPCProbeConfig(service=f.get("service", str, ""), tls=f.get("tls", bool, False), tls_config=tls_section(f),
                              metadata=_metadata(f), preferred_ip_protocol=proto, ip_protocol_fallback=fallback)
        f.done()
        return cfg

    def check_target(self, target: str) -> None:
        _host_port(target, False)

    def expected_phases(self, target: str, settings: GRPCProbeConfig) -> tuple[str, ...]:
        try:
            host, _ = _host_port(target, settings.tls)
        except ProbeFailure:
            return ()
        reached = {"dns": not is_ip(host), "tls": settings.tls}
        return tuple(p.name for p in self.phases if reached.get(p.name, True))

    async def probe(self, ctx: ProbeContext, target: str, settings: GRPCProbeConfig) -> None:
        cfg = settings
        host, port = _host_port(target, cfg.tls)
        call = _Call()
        try:
            conn = await open_connection(ctx, host, port, cfg.preferred_ip_protocol, cfg.ip_protocol_fallback)
            try:
                if cfg.tls:
                    await start_tls(ctx, conn, host, cfg.tls_config, alpn=("h2",))
                    if ctx.tls is not None and ctx.tls.alpn != "h2":
                        raise ProbeFailure("protocol_error", f"the server did not agree on HTTP/2 (ALPN {ctx.tls.alpn!r})")
                await call.run(ctx, conn, join_host_port(host, port), cfg)
            finally:
                conn.close()
        finally:
            ctx.details = call.details()
        if call.status_code != 0:
            raise ProbeFailure("grpc_status", f"grpc-status {_code_name(call.status_code or 0)} ({call.status_code})"
                               + (f": {call.message}" if call.message else ""), phase="transfer")
        if call.serving_status != "SERVING":
            raise ProbeFailure("grpc_not_serving", f"service {cfg.service!r} is {call.serving_status}", phase="transfer")

    def exposition(self, result: ProbeResult) -> Iterable[tuple[ProbeFamily, ProbeSamples]]:
        d = result.details if isinstance(result.details, GRPCDetails) else GRPCDetails()
        phases = result.total_phases()
        yield _DURATION, [(text, sum([phases.get(p, 0.0) for p in ours])) for text, ours in _BLACKBOX_PHASES]
        yield _SSL, 1.0 if result.tls is not None and result.tls.completed else 0.0
        code = d.status_code
        if code is None:  # as grpc-go reports a call that got no status: a deadline, or the transport failed
            code = DEADLINE_EXCEEDED if result.failure is not None and "timeout" in result.failure.reason else UNAVAILABLE
        yield _STATUS_CODE, float(code)
        yield _HEALTH, [(text, 1.0 if status == d.serving_status else 0.0) for status, text in _SERVING_LABELS]


def _host_port(target: str, tls: bool) -> tuple[str, int]:
    address = target
    for scheme in ("http://", "https://"):
        if address.lower().startswith(scheme):
            address = address[len(scheme):].rstrip("/")
    return target_host_port(address, 443 if tls else 80)


class _Call:
    """One Health/Check call on stream 1; what it learnt stays readable when it fails."""

    def __init__(self) -> None:
        self.status_code: int | None = None
        self.serving_status: str | None = None
        self.message = ""

    def details(self) -> GRPCDetails:
        return GRPCDetails(status_code=self.status_code, serving_status=self.serving_status, message=self.message)

    async def run(self, ctx: ProbeContext, conn: object, authority: str, cfg: GRPCProbeConfig) -> None:
        exchange = H2Exchange(conn)  # type: ignore[arg-type]
        message = health_pb2.HealthCheckRequest(service=cfg.service).SerializeToString()
        timeout_ms = max(int(ctx.remaining() * 1000), 1)
        headers = [("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", USER_AGENT),
                   ("grpc-timeout", f"{timeout_ms}m"), *((k, reveal(v)) for k, v in cfg.metadata),
                   *ctx.propagation_headers()]
        body = struct.pack("!BI", 0, len(message)) + message
        await ctx.phase("request", exchange.send_request("POST", authority, _PATH, "https" if cfg.tls else "http",
                                                         headers, body))
        await ctx.phase("first_byte", exchange.wait_first_byte())
        await ctx.phase("transfer", self._response(exchange))

    async def _response(self, exchange: H2Exchange) -> None:
        status, headers = await exchange.read_head()
        if status != 200:
            raise ProbeFailure("protocol_error", f"HTTP status {status} instead of 200: not a gRPC endpoint")
        fields = dict(headers)
        if "grpc-status" not in fields:  # not Trailers-Only: the message, then the status in the trailers
            if not fields.get("content-type", "").startswith("application/grpc"):
                raise ProbeFailure("protocol_error", f"content-type {fields.get('content-type')!r} is not application/grpc")
            _, body = await exchange.read_body(limit=MAX_RESPONSE, keep=True, keep_limit=MAX_RESPONSE)
            fields = dict(exchange.trailers)
        else:
            _, body = await exchange.read_body(limit=MAX_RESPONSE, keep=False, keep_limit=0)
        code = fields.get("grpc-status", "")
        if not code.isdigit():
            raise ProbeFailure("protocol_error", f"no valid grpc-status in the response (got {code!r})")
        self.status_code = int(code)
        self.message = unquote(fields.get("grpc-message", ""))[:500]  # percent-encoded (gRPC over HTTP/2 spec)
        if self.status_code == 0:
            self.serving_status = _serving_status(body)


def _serving_status(body: bytes) -> str:
    """The ServingStatus of a length-prefixed HealthCheckResponse."""
    if len(body) < 5:
        raise ProbeFailure("protocol_error", f"response message of {len(body)} bytes, shorter than its 5-byte prefix")
    compressed, length = struct.unpack_from("!BI", body)
    if compressed:
        raise ProbeFailure("protocol_error", "compressed response message without a grpc-encoding we asked for")
    if length != len(body) - 5:
        raise ProbeFailure("protocol_error", f"response message length {length} but {len(body) - 5} bytes followed")
    response = health_pb2.HealthCheckResponse()
    try:
        response.ParseFromString(body[5:])
    except DecodeError as exc:
        raise ProbeFailure("protocol_error", f"not a HealthCheckResponse: {exc}") from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status) \
        if response.status in health_pb2.HealthCheckResponse.ServingStatus.values() else "UNKNOWN"


# blackbox's probe_grpc_duration_seconds phases, from ours.
_BLACKBOX_PHASES = tuple((label_text((("phase", bb),)), ours) for bb, ours in (
    ("resolve", ("dns",)), ("check", ("connect", "tls", "request", "first_byte", "transfer"))))
_SERVING_LABELS = tuple((status, label_text((("serving_status", status),))) for status in SERVING_STATUSES)
_DURATION = ProbeFamily("probe_grpc_duration_seconds", "Duration of gRPC request by phase")
_SSL = ProbeFamily("probe_grpc_ssl", "Indicates if SSL was used for the connection")
_STATUS_CODE = ProbeFamily("probe_grpc_status_code", "Response gRPC status code")
_HEALTH = ProbeFamily("probe_grpc_healthcheck_response", "Response HealthCheck response")

register(GRPCProber())
