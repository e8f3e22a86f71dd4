"""A real gRPC health server for the grpc prober's tests: grpcio's own reference implementation.

grpcio-health-checking's HealthServicer on a grpcio server (its own threads, so
it answers whichever event loop the test runs), cleartext or TLS, on
127.0.0.1 with an ephemeral port. "" and "up" are SERVING, "down" is
NOT_SERVING; any other service is unknown to it (the call ends NOT_FOUND).
The metadata of every call is recorded in ``metadata``.
"""
from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from exporter.certs import Issued


class HealthServer:
    def __init__(self, tls: Issued | None = None) -> None:
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[_RecordMetadata(self.metadata)])
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("up", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        address = "127.0.0.1:0"
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            with open(tls.cert_file, "rb") as chain:
                credentials = grpc.ssl_server_credentials([(tls.key_pem, chain.read())])
            self.port = self.server.add_secure_port(address, credentials)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _RecordMetadata(grpc.ServerInterceptor):
    def __init__(self, seen: list[dict[str, str]]) -> None:
        self.seen = seen

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.seen.append(dict(handler_call_details.invocation_metadata))
        return continuation(handler_call_details)
