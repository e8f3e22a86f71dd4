"""The ``connhealth`` command line."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .config import ConfigError, ResolverConfig, default_module_for, load_config, load_config_or_builtins, split_host_port
from .engine import run_probe
from .probers import PROBERS
from .failures import ProbeFailure
from .render import render
from .sinks.traces_export import TracingOptions, setup_tracing, shutdown_tracing

EXIT_OK, EXIT_PROBE_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="connhealth", description="Connection-health prober and Prometheus exporter.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("probe", help="probe one target once and show its phases")
    p.add_argument("target", help="URL for the http prober (https://host/path), host:port for tcp")
    p.add_argument("--module", help="module name (default: http_2xx for URLs, tcp_connect for host:port)")
    p.add_argument("--config", help="blackbox-style config file with modules")
    p.add_argument("--timeout", type=float, help="overall deadline in seconds (default: the module's, else 10)")
    p.add_argument("--nameserver", action="append", default=[], metavar="HOST:PORT",
                   help="resolve with this DNS server instead of the system resolver (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the waterfall")
    _tracing_flags(p)

    s = sub.add_parser("serve", help="run the exporter: /probe, /metrics, status page")
    s.add_argument("--config.file", dest="config_file", help="config file (modules, targets, target_files, scheduler)")
    s.add_argument("--web.listen-address", dest="listen", action="append", metavar="[HOST]:PORT",
                   help="address to listen on (repeatable; default :9115)")
    s.add_argument("--web.route-prefix", dest="route_prefix", default="/", help="prefix for all routes (default /)")
    s.add_argument("--timeout-offset", dest="timeout_offset", type=float, default=0.5,
                   help="seconds subtracted from Prometheus' scrape timeout (default 0.5)")
    s.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
    s.add_argument("--history.limit", dest="history_limit", type=int, default=100, help="recent probes kept (default 100)")
    s.add_argument("--shutdown-grace", dest="grace", type=float, default=10.0,
                   help="seconds in-flight probes may finish after SIGTERM (default 10)")
    s.add_argument("--demo", action="store_true", help="start local demo targets and probe them continuously")
    s.add_argument("--event-loop", dest="event_loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                   help="event loop implementation (default auto: uvloop when installed, ~20%% more probes/s)")
    _tracing_flags(s)

    c = sub.add_parser("check-config", help="validate a config file (exit 0 if valid, 2 if not)")
    c.add_argument("file")

    d = sub.add_parser("demo", help="start local demo targets and probe each once")
    d.add_argument("--json", action="store_true", help="print one JSON object per probe")

    dg = sub.add_parser("diagnose", help="walk seed 002's decision tree for a URL: DNS, connect, TLS, keep-alive, stream")
    dg.add_argument("url", help="http:// or https:// URL")
    dg.add_argument("--nameserver", action="append", default=[], metavar="HOST:PORT",
                    help="also resolve with this DNS server, and use it for every step (repeatable)")
    dg.add_argument("--idle", type=float, default=10.0, help="your client's idle timeout in seconds (default 10; Go: 90)")
    dg.add_argument("--stream", action="store_true", help="the URL is an event stream (SSE): check its heartbeat gaps")
    dg.add_argument("--hold", type=float, default=10.0, help="with --stream: seconds to hold the stream (default 10)")
    dg.add_argument("--heartbeat-interval", dest="heartbeat_interval", type=float, default=15.0,
                    help="with --stream: the server's promised maximum gap in seconds (default 15)")
    dg.add_argument("--timeout", type=float, default=10.0, help="deadline of each step in seconds (default 10)")
    dg.add_argument("--ca-file", dest="ca_file", help="CA bundle to verify https with")
    dg.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    dg.add_argument("--json", action="store_true", help="print the path and the verdict as one JSON object")

    gen = sub.add_parser("generate", help="write dashboards, rule files and Grafana provisioning from the SLO spec")
    gen.add_argument("--config", help="config file with a slos: section (default: built-in modules, no SLOs)")
    gen.add_argument("--out", required=True, help="directory; writes OUT/alerts/generated/ and OUT/dashboards/generated/")
    return parser


def _tracing_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otlp.endpoint", dest="otlp_endpoint",
                   help="export a trace per probe to this OTLP endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT; none: no export)")
    p.add_argument("--otlp.protocol", dest="otlp_protocol", choices=["http/protobuf", "grpc"],
                   help="OTLP protocol (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)")


def _tracing_options(args: argparse.Namespace) -> TracingOptions:
    return TracingOptions(endpoint=args.otlp_endpoint, protocol=args.otlp_protocol)


def _cmd_probe(args: argparse.Namespace) -> int:
    config = load_config_or_builtins(args.config)
    name = args.module or default_module_for(args.target)
    if name not in config.modules:
        raise ConfigError(f"unknown module {name!r} (known: {', '.join(sorted(config.modules))})")
    module = config.modules[name]
    if args.nameserver:
        servers = tuple(_nameserver(ns) for ns in args.nameserver)
        module = dataclasses.replace(module, resolver=ResolverConfig(nameservers=servers, timeout=module.resolver.timeout))
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    _check_target(args.target, module.prober)
    processor = setup_tracing(_tracing_options(args))
    result = asyncio.run(run_probe(args.target, module, args.timeout))
    shutdown_tracing(processor)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result, color=sys.stdout.isatty()))
    return EXIT_OK if result.success else EXIT_PROBE_FAILED


def _check_target(target: str, prober: str) -> None:
    try:
        PROBERS[prober].check_target(target)
    except ProbeFailure as exc:
        raise ConfigError(f"invalid target for prober {prober}: {exc}") from None


def _nameserver(text: str) -> tuple[str, int]:
    try:
        return split_host_port(text, default_port=53)
    except ValueError as exc:
        raise ConfigError(f"--nameserver: {exc}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServeOptions, serve

    logging.basicConfig(level=args.log_level.upper().replace("WARN", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ServeOptions(
        config_file=args.config_file,
        listen=args.listen or [":9115"],
        route_prefix=args.route_prefix,
        timeout_offset=args.timeout_offset,
        history_limit=args.history_limit,
        grace=args.grace,
        tracing=_tracing_options(args),
    )
    if args.history_limit < 1:
        raise ConfigError("--history.limit must be at least 1")
    if args.demo:
        from .demo import serve_demo

        return _run(serve_demo(options), args.event_loop)
    return _run(serve(options, load_config_or_builtins(args.config_file)), args.event_loop)


def _run(coro: Coroutine[Any, Any, int], event_loop: str) -> int:
    factory = None
    if event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                coro.close()
                raise ConfigError("--event-loop uvloop: uvloop is not installed") from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK ({len(config.modules)} modules, {len(config.targets)} targets, {len(config.target_files)} target file globs)")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(as_json=args.json)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import Options, main as diagnose_main

    for name in ("idle", "hold", "heartbeat_interval", "timeout"):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 3600 seconds, got {value:g}")
    opts = Options(url=args.url, nameservers=tuple(_nameserver(ns) for ns in args.nameserver), idle=args.idle,
                   stream=args.stream, hold=args.hold, heartbeat_interval=args.heartbeat_interval, timeout=args.timeout,
                   insecure=args.insecure, ca_file=args.ca_file)
    code, text = diagnose_main(opts, args.json)
    print(text)
    return code


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    written = generate(load_config_or_builtins(args.config), args.out)
    print(f"wrote {len(written)} files under {args.out}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"probe": _cmd_probe, "serve": _cmd_serve, "check-config": _cmd_check_config, "demo": _cmd_demo,
                "generate": _cmd_generate, "diagnose": _cmd_diagnose}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:  # the one place a usage/config error becomes exit 2
        print(f"connhealth: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
