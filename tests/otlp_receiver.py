"""A real OTLP trace receiver on 127.0.0.1, for tests: OTLP/HTTP (protobuf) and OTLP/gRPC.

Both transports decode ``ExportTraceServiceRequest`` with the generated
classes from ``opentelemetry-proto`` (nothing hand-parsed) and answer with an
``ExportTraceServiceResponse``, exactly as a collector would. Every span
received is flattened into a ``ReceivedSpan`` (ids as lowercase hex, as they
appear in a ``traceparent``) and kept in ``receiver.spans``.

Both servers run in the test's own event loop (aiohttp and ``grpc.aio``), so
they work next to ``tests/peers.py``. Usage::

    async with OTLPReceiver() as rx:          # starts HTTP and gRPC
        ... rx.http_endpoint / rx.grpc_endpoint ...
        spans = await rx.wait_for_spans(lambda s: s.name == "probe http_2xx", timeout=10)

Every wait is bounded and fails with what *was* received.
"""
from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

LOCALHOST = "127.0.0.1"

# opentelemetry.proto.trace.v1.Status.StatusCode
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET
STATUS_OK = trace_pb2.Status.STATUS_CODE_OK
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR

SPAN_KIND_INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
SPAN_KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    trace_state: str
    resource: dict[str, Any]
    scope: str
    transport: str  # "http" or "grpc"

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def is_error(self) -> bool:
        return self.status_code == STATUS_ERROR


@dataclass
class ExportCall:
    transport: str
    spans: int
    path: str  # URL path (HTTP) or gRPC method
    headers: dict[str, str] = field(default_factory=dict)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.receiver._ingest(request, "grpc", metadata, "/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        return trace_service_pb2.ExportTraceServiceResponse()


class OTLPReceiver:
    """Collects every span exported to it over OTLP/HTTP and/or OTLP/gRPC."""

    def __init__(self, *, http: bool = True, grpc_: bool = True, host: str = LOCALHOST,
                 http_paths: tuple[str, ...] = ("/v1/traces", "/otlp/traces"), http_port: int = 0) -> None:
        """``http_paths``: where OTLP/HTTP is accepted; the default path plus one custom path, for
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (a signal URL that must be used as-is). ``http_port``: 0 for
        any free port; a stopped receiver starts again on the port it had (a collector restarted)."""
        self.host = host
        self.http_paths = http_paths
        self._want_http = http
        self._want_grpc = grpc_
        self.spans: list[ReceivedSpan] = []
        self.calls: list[ExportCall] = []
        self.errors: list[str] = []
        self.http_port = http_port
        self.grpc_port = 0
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._changed: asyncio.Condition | None = None

    # --- endpoints ------------------------------------------------------------------
    @property
    def http_endpoint(self) -> str:
        """Base URL; the exporter appends /v1/traces (as OTEL_EXPORTER_OTLP_ENDPOINT)."""
        assert self.http_port, "HTTP receiver not started"
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        assert self.grpc_port, "gRPC receiver not started"
        return f"http://{self.host}:{self.grpc_port}"

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> OTLPReceiver:
        self._changed = asyncio.Condition()
        try:
            if self._want_http:
                app = web.Application(client_max_size=64 * 2**20)
                for path in self.http_paths:
                    app.router.add_post(path, self._handle_http)
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
                await self._runner.setup()
                site = web.TCPSite(self._runner, self.host, self.http_port, reuse_address=True)
                await site.start()
                self.http_port = self._runner.addresses[0][1]
            if self._want_grpc:
                self._grpc = grpc.aio.server()
                trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._grpc)
                self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:0")
                assert self.grpc_port, "could not bind the gRPC receiver"
                await self._grpc.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self._grpc is not None:
            server, self._grpc = self._grpc, None
            await server.stop(grace=0.2)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> OTLPReceiver:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- ingest ---------------------------------------------------------------------
    async def _handle_http(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            ctype = request.headers.get("Content-Type", "")
            if not ctype.startswith("application/x-protobuf"):
                raise ValueError(f"unexpected Content-Type {ctype!r} (this receiver speaks OTLP/HTTP protobuf)")
            message = trace_service_pb2.ExportTraceServiceRequest()
            message.ParseFromString(body)
        except Exception as exc:  # noqa: BLE001 - answer 400 like a collector, and remember why
            self.errors.append(f"http: {exc}")
            return web.Response(status=400, text=str(exc))
        self._ingest(message, "http", dict(request.headers), request.path)
        response = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")

    def _ingest(self, message: trace_service_pb2.ExportTraceServiceRequest, transport: str, headers: dict[str, str],
                path: str) -> None:
        n = 0
        for rs in message.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append(ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        kind=span.kind,
                        attributes=attributes(span.attributes),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        trace_state=span.trace_state,
                        resource=resource,
                        scope=ss.scope.name,
                        transport=transport,
                    ))
                    n += 1
        self.calls.append(ExportCall(transport, n, path, headers))
        self._notify()

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        # _ingest always runs on the loop (aiohttp handler or grpc.aio servicer).
        asyncio.get_running_loop().create_task(wake())

    # --- queries --------------------------------------------------------------------
    def find(self, predicate: Callable[[ReceivedSpan], bool] | None = None, **equal: Any) -> list[ReceivedSpan]:
        """Spans matching ``predicate`` and every ``field=value`` in ``equal``."""
        return [
            s for s in self.spans
            if (predicate is None or predicate(s)) and all(getattr(s, k) == v for k, v in equal.items())
        ]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return self.find(trace_id=trace_id)

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return self.find(trace_id=parent.trace_id, parent_span_id=parent.span_id)

    async def wait_for_spans(
        self, predicate: Callable[[ReceivedSpan], bool], timeout: float, *, count: int = 1, what: str = "",
    ) -> list[ReceivedSpan]:
        """Wait (at most ``timeout`` seconds) until ``count`` spans match ``predicate``; return them all."""
        assert self._changed is not None, "receiver not started"
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(predicate)
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                summary = "\n".join(
                    f"  {s.transport} {s.name!r} trace={s.trace_id} span={s.span_id} parent={s.parent_span_id or '-'}"
                    for s in self.spans[-40:]
                )
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {count} span(s) {what}: got {len(found)}; "
                    f"{len(self.spans)} received in {len(self.calls)} export calls; errors {self.errors}\n{summary}"
                )
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.25))
                except asyncio.TimeoutError:
                    pass

    async def wait_for_trace(self, trace_id: str, timeout: float, *, count: int = 1) -> list[ReceivedSpan]:
        return await self.wait_for_spans(lambda s: s.trace_id == trace_id, timeout, count=count, what=f"of trace {trace_id}")
