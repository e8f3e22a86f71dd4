"""The ``connhealth`` command line.

Only argparse and the parsing primitives load at start-up: each command imports
what it needs when it runs, so ``connhealth --help`` starts in well under 0.3 s
(tests/test_cli_curl.py::test_help_starts_fast pins it).

Adding a command: write ``add_args(parser)`` and ``run(args) -> int`` (import
your module inside ``run``), and append a ``Command`` to ``COMMANDS``.

Exit codes: 0 success, 1 probe failed or start-up failed, 2 usage or config error.
Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .schema import ConfigError, StartupError, parse_duration

EXIT_OK, EXIT_PROBE_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_STARTUP = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- shared option groups --------------------------------------------------------------
def duration_arg(flag: str, zero_ok: bool = False) -> Callable[[str], float]:
    """A positive (or with ``zero_ok`` zero), finite duration: ``5s``, ``250ms``, ``1m30s`` or plain seconds (``0.5``)."""

    def parse(text: str) -> float:
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = parse_duration(text, flag)
            except ConfigError:
                raise argparse.ArgumentTypeError(f"{flag}: invalid duration {text!r} (use e.g. 5s, 250ms or 0.5)") from None
        if not math.isfinite(seconds) or seconds < 0 or seconds == 0 and not zero_ok:
            raise argparse.ArgumentTypeError(f"{flag} must be {'zero or more' if zero_ok else 'positive'} and finite, e.g. 5s or 0.5 (got {text!r})")
        return seconds

    return parse


def _config_flag(p: argparse.ArgumentParser, help: str) -> None:
    # --config.file everywhere (blackbox's spelling); --config is the old spelling of probe and generate.
    p.add_argument("--config.file", "--config", dest="config_file", metavar="FILE", help=help)


def _log_flags(p: argparse.ArgumentParser, default_level: str = "info") -> None:
    p.add_argument("--log.level", dest="log_level", default=default_level, choices=["debug", "info", "warn", "error"],
                   help=f"log level (default {default_level})")
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"],
                   help="log line format (default logfmt)")


def _tracing_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otlp.endpoint", dest="otlp_endpoint",
                   help="export a trace per probe to this OTLP endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT; none: no export)")
    p.add_argument("--otlp.protocol", dest="otlp_protocol", choices=["http/protobuf", "grpc"],
                   help="OTLP protocol (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)")


def _setup_logging(args: argparse.Namespace) -> None:
    from .logsetup import setup_logging

    setup_logging(args.log_level, args.log_format)


def _tracing_options(args: argparse.Namespace) -> Any:
    from .sinks.traces_export import TracingOptions

    return TracingOptions(endpoint=args.otlp_endpoint, protocol=args.otlp_protocol)


# --- probe ---------------------------------------------------------------------------
def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="URL for the http prober (https://host/path), host:port for tcp")
    p.add_argument("--module", help="module name (default: http_2xx for URLs, tcp_connect for host:port)")
    _config_flag(p, "blackbox-style config file with modules")
    p.add_argument("-m", "--max-time", "--timeout", dest="timeout", type=duration_arg("--timeout"), metavar="DURATION",
                   help="overall deadline: 5s, 250ms or seconds (default: the module's, else 10s); raises the module's")
    p.add_argument("--nameserver", action="append", default=[], metavar="HOST:PORT",
                   help="resolve with this DNS server instead of the system resolver (repeatable)")
    curl = p.add_argument_group("curl-like options (they build an ad-hoc module on top of --module)")
    curl.add_argument("-k", "--insecure", action="store_true", help="do not verify the server's certificate")
    curl.add_argument("--cacert", metavar="FILE", help="trust this CA bundle (PEM)")
    curl.add_argument("--cert", metavar="FILE", help="client certificate (PEM), with --key")
    curl.add_argument("--key", metavar="FILE", help="client private key (PEM), with --cert")
    curl.add_argument("--sni", metavar="NAME", help="TLS server name to send and verify (default: the target's host)")
    curl.add_argument("-H", "--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                      help="request header (repeatable)")
    curl.add_argument("-X", "--request", dest="method", metavar="METHOD", help="request method (default GET, POST with -d)")
    curl.add_argument("-d", "--data", dest="data", metavar="DATA", help="request body; @FILE reads it from a file")
    curl.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR",
                      help="connect to ADDR for HOST:PORT; Host header and SNI stay HOST (repeatable)")
    curl.add_argument("--connect-to", dest="connect_to", action="append", default=[], metavar="HOST1:PORT1:HOST2:PORT2",
                      help="connect to HOST2:PORT2 for HOST1:PORT1 (empty parts match any / keep the original)")
    family = curl.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", dest="ip", action="store_const", const="ip4", help="IPv4 only")
    family.add_argument("-6", "--ipv6", dest="ip", action="store_const", const="ip6", help="IPv6 only")
    version = curl.add_mutually_exclusive_group()
    version.add_argument("--http1.1", dest="http_version", action="store_const", const="1.1", help="HTTP/1.1 only")
    version.add_argument("--http2", dest="http_version", action="store_const", const="2", help="offer HTTP/2 (ALPN), the default")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object (docs/json.md) instead of the waterfall")
    out.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                     help="colour the waterfall (default auto: on a terminal, unless NO_COLOR is set)")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="print the probe's own log (resolve, connect, TLS, request, redirects) on stderr, as /logs shows it")
    _log_flags(p, "warn")
    _tracing_flags(p)


def _cmd_probe(args: argparse.Namespace) -> int:
    import json

    from .adhoc import build_module
    from .config import load_config_or_builtins

    _setup_logging(args)
    config = load_config_or_builtins(args.config_file)
    module, notes = build_module(config, args)
    for note in notes:
        print(f"connhealth: {note}", file=sys.stderr)
    color = _use_color(args.color, sys.stdout)
    result = _run_probe(args, module)
    if args.verbose:
        sys.stderr.write("".join(f"* {line}\n" for line in result.logs))
    if args.json:
        out = json.dumps(result.to_dict(), indent=2)
    else:
        from .render import render

        out = render(result, color=color)
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return EXIT_OK if result.success else EXIT_PROBE_FAILED


def _run_probe(args: argparse.Namespace, module: Any) -> Any:
    import asyncio

    from .engine import run_probe
    from .sinks.traces_export import setup_tracing, shutdown_cli_tracing

    processor = setup_tracing(_tracing_options(args))
    result = asyncio.run(run_probe(args.target, module, args.timeout))
    warning = shutdown_cli_tracing(processor)
    if warning:
        print(f"connhealth: warning: {warning}", file=sys.stderr)
    return result


def _use_color(choice: str, stream: Any) -> bool:
    if choice != "auto":
        return choice == "always"
    # https://no-color.org: set and not empty disables colour.
    return not os.environ.get("NO_COLOR") and stream.isatty()


# --- serve ---------------------------------------------------------------------------
def _serve_args(s: argparse.ArgumentParser) -> None:
    _config_flag(s, "config file (modules, targets, target_files, scheduler)")
    s.add_argument("--config.check", dest="config_check", action="store_true",
                   help="validate the config file and exit, as check-config (blackbox_exporter's flag)")
    s.add_argument("--web.listen-address", dest="listen", action="append", metavar="[HOST]:PORT",
                   help="address to listen on (repeatable; default :9115)")
    s.add_argument("--web.config.file", dest="web_config_file",
                   help="exporter-toolkit web config: TLS (client certificates too), basic auth, security headers")
    s.add_argument("--web.route-prefix", dest="route_prefix", default="/", help="prefix for all routes (default /)")
    s.add_argument("--web.trace-url", dest="trace_url", metavar="TEMPLATE",
                   help="link trace ids on the status page to this URL; {trace_id} is replaced "
                        "(e.g. http://jaeger:16686/trace/{trace_id})")
    s.add_argument("--timeout-offset", dest="timeout_offset", type=duration_arg("--timeout-offset", zero_ok=True), default=0.5,
                   help="subtracted from Prometheus' scrape timeout (default 0.5s)")
    s.add_argument("--history.limit", dest="history_limit", type=int, default=100, help="recent probes kept (default 100)")
    s.add_argument("--history.per-target", dest="history_per_target", type=int, default=10,
                   help="recent probes kept per target as well, so one failing target cannot flush the others (default 10)")
    s.add_argument("--shutdown-grace", dest="grace", type=duration_arg("--shutdown-grace", zero_ok=True), default=10.0,
                   help="time in-flight probes may finish after SIGTERM (default 10s)")
    s.add_argument("--probe.concurrency", dest="probe_concurrency", type=int, default=1000,
                   help="/probe requests running at once; more are answered 503 (default 1000)")
    s.add_argument("--probe.connect-rate", dest="connect_rate", type=float, default=10.0,
                   help="paced connects: tokens per millisecond for all probes' connects, so they do not leave in SYN "
                        "bursts; 0 turns pacing off (default 10)")
    s.add_argument("--probe.connect-burst", dest="connect_burst", type=int, default=10,
                   help="paced connects: the most tokens held at once (default 10)")
    s.add_argument("--metrics.created", dest="created_series", action="store_true",
                   help="expose the _created series of the exporter's own counters (off by default)")
    s.add_argument("--demo", action="store_true", help="start local demo targets and probe them continuously")
    scale = s.add_argument_group("scale up and out (README: Deploy and scale)")
    scale.add_argument("--shard", metavar="INDEX/COUNT",
                       help="probe only this replica's share of the continuous targets (rendezvous hashing of target and "
                            "module); INDEX may be 'ordinal': the number ending the host name, as in a StatefulSet "
                            "(default: $CONNHEALTH_SHARD, else every target)")
    scale.add_argument("--workers", type=int, default=1,
                       help="worker processes: each probes its share of the continuous targets; all serve /probe on the "
                            "listen address (SO_REUSEPORT); /metrics is one view (default 1: no workers)")
    scale.add_argument("--prober", metavar="NAME",
                       help="a prober label (e.g. the region) on every /metrics series: --external-label prober=NAME")
    scale.add_argument("--external-label", dest="external_labels", action="append", default=[], metavar="NAME=VALUE",
                       help="a label on every /metrics series (repeatable; adds to the config's external_labels)")
    scale.add_argument("--worker-control", dest="worker_control", help=argparse.SUPPRESS)  # set by the parent of --workers
    scale.add_argument("--worker-index", dest="worker_index", type=int, help=argparse.SUPPRESS)
    s.add_argument("--event-loop", dest="event_loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                   help="event loop implementation (default auto: uvloop when installed, ~20%% more probes/s)")
    _log_flags(s)
    _tracing_flags(s)


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.config_check:
        args.file = None
        return _cmd_check_config(args)
    _setup_logging(args)
    from .config import load_config_or_builtins
    from .server import ServeOptions, serve

    for flag, value in (("--history.limit", args.history_limit), ("--history.per-target", args.history_per_target)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if args.trace_url is not None and "{trace_id}" not in args.trace_url:
        raise ConfigError(f"--web.trace-url must contain {{trace_id}} (got {args.trace_url!r})")
    from .shard import MAX_SHARDS, Shard, parse_shard, shard_from_env

    if not 1 <= args.workers <= MAX_SHARDS:
        raise ConfigError(f"--workers must be between 1 and {MAX_SHARDS}, got {args.workers}")
    replica = parse_shard(args.shard) if args.shard else shard_from_env()
    shards = tuple(s for s in (replica,) if s is not None and s.count > 1)
    if args.worker_index is not None:
        shards += (Shard(args.worker_index, args.workers, "worker"),)
    config = load_config_or_builtins(args.config_file)
    options = ServeOptions(
        shards=shards,
        external_labels=_external_labels(args, config),
        worker=args.worker_index,
        config_file=args.config_file,
        listen=args.listen or [":9115"],
        route_prefix=args.route_prefix,
        timeout_offset=args.timeout_offset,
        history_limit=args.history_limit,
        history_per_target=args.history_per_target,
        grace=args.grace,
        tracing=_tracing_options(args),
        web_config_file=args.web_config_file,
        trace_url=args.trace_url,
        created_series=args.created_series,
        probe_concurrency=args.probe_concurrency,
        connect_rate=args.connect_rate,
        connect_burst=args.connect_burst,
    )
    if args.workers > 1 and args.worker_index is None:
        from .workers import run_parent

        if args.demo:
            raise ConfigError("--workers does not combine with --demo (each worker would start demo targets of its own)")

        return run_parent(options, args.workers, args.argv)
    if args.demo:
        from .demo import serve_demo

        return _run(serve_demo(options), args.event_loop)
    return _run(serve(options, config, worker_control=args.worker_control), args.event_loop)


def _external_labels(args: argparse.Namespace, config: Any) -> tuple[tuple[str, str], ...]:
    """The config's external_labels, then --external-label NAME=VALUE, then --prober NAME (later ones win)."""
    from .config import parse_labels

    given: dict[str, str] = dict(config.external_labels)
    flags = {}
    for item in args.external_labels:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--external-label: expected NAME=VALUE, got {item!r}")
        flags[name] = value
    if args.prober is not None:
        flags["prober"] = args.prober
    given.update(parse_labels(flags, "--external-label"))
    return tuple(sorted(given.items()))


def _run(coro: Coroutine[Any, Any, int], event_loop: str) -> int:
    import asyncio

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


# --- the small commands ----------------------------------------------------------------
def _check_config_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("file", nargs="?", help="the config file (or --config.file)")
    _config_flag(c, "the config file")


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .config import check_config

    path = args.config_file or args.file
    if not path:
        raise ConfigError("check-config: give the config file (connhealth check-config FILE)")
    config, errors, warnings = check_config(path)
    if config is None:
        # Every error in one run, each naming its path (modules.x.http.y: ...).
        for error in errors[:MAX_ERRORS_SHOWN]:
            print(f"connhealth: {error}", file=sys.stderr)
        if len(errors) > MAX_ERRORS_SHOWN:
            print(f"connhealth: ... and {len(errors) - MAX_ERRORS_SHOWN} more errors", file=sys.stderr)
        print(f"connhealth: {path}: {_count(len(errors), 'error')}", file=sys.stderr)
        return EXIT_USAGE
    builtin = len(config.modules) - len(config.raw_modules)
    print(f"{path}: OK ({_count(len(config.raw_modules), 'module')} defined, {builtin} built-in; "
          f"{_count(len(config.targets), 'target')}, {_count(len(config.target_files), 'target file glob')})")
    for warning in [*warnings, *(config.slos.warnings() if config.slos is not None else ())]:
        print(f"{path}: warning: {warning}")
    return EXIT_OK


# A file with thousands of broken modules lists the first this many errors (and how many more).
MAX_ERRORS_SHOWN = 200


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _demo_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--json", action="store_true", help="print one JSON object per probe")
    d.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the waterfalls (default auto: on a terminal, unless NO_COLOR is set)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(as_json=args.json, color=_use_color(args.color, sys.stdout))


def _generate_args(gen: argparse.ArgumentParser) -> None:
    _config_flag(gen, "config file with a slos: section (default: built-in modules, no SLOs)")
    gen.add_argument("--out", help="directory; writes OUT/alerts/generated/ and OUT/dashboards/generated/ "
                                   "(with --format prometheusrule or grafana-configmaps: the file to write, default stdout)")
    gen.add_argument("--format", choices=["files", "prometheusrule", "grafana-configmaps"], default="files",
                     help="files (default): rule files, dashboards and provisioning under --out; prometheusrule: the "
                          "rules as one Prometheus Operator PrometheusRule; grafana-configmaps: the dashboards as "
                          "ConfigMaps for Grafana's dashboard sidecar (Kubernetes)")
    gen.add_argument("--prometheus-url", help="Prometheus as Grafana reaches it, for the provisioned data source "
                                              "(default: Grafana's $CONNHEALTH_PROMETHEUS_URL)")
    gen.add_argument("--traces-url", help="the trace store (Jaeger query or Tempo) as Grafana reaches it "
                                          "(default: Grafana's $CONNHEALTH_TRACES_URL)")
    gen.add_argument("--traces", choices=["jaeger", "tempo"], default="jaeger",
                     help="the trace store: its data source type and the dashboards' trace-search links (default jaeger)")


def _diagnose_args(dg: argparse.ArgumentParser) -> None:
    dg.add_argument("url", help="http:// or https:// URL")
    dg.add_argument("--nameserver", action="append", default=[], metavar="HOST:PORT",
                    help="also resolve with this DNS server, and use it for every step (repeatable)")
    dg.add_argument("--idle", type=duration_arg("--idle"), default=10.0,
                    help="your client's idle timeout (default 10s; Go: 90s)")
    dg.add_argument("--stream", action="store_true", help="the URL is an event stream (SSE): check its heartbeat gaps")
    dg.add_argument("--hold", type=duration_arg("--hold"), default=10.0, help="with --stream: how long to hold the stream (default 10s)")
    dg.add_argument("--heartbeat-interval", dest="heartbeat_interval", type=duration_arg("--heartbeat-interval"), default=15.0,
                    help="with --stream: the server's promised maximum gap (default 15s)")
    dg.add_argument("--timeout", type=duration_arg("--timeout"), default=10.0, help="deadline of each step (default 10s)")
    dg.add_argument("--ca-file", dest="ca_file", help="CA bundle to verify https with")
    dg.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    dg.add_argument("--json", action="store_true", help="print the path and the verdict as one JSON object")


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .adhoc import _host_port
    from .diagnose import Options, main as diagnose_main

    for name in ("idle", "hold", "heartbeat_interval", "timeout"):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 3600 seconds, got {value:g}")
    opts = Options(url=args.url, nameservers=tuple(_host_port(ns, "--nameserver", 53) for ns in args.nameserver), idle=args.idle,
                   stream=args.stream, hold=args.hold, heartbeat_interval=args.heartbeat_interval, timeout=args.timeout,
                   insecure=args.insecure, ca_file=args.ca_file)
    code, text = diagnose_main(opts, args.json)
    print(text)
    return code


def _cmd_generate(args: argparse.Namespace) -> int:
    from .config import load_config_or_builtins
    from .generate import Links, generate

    urls = {"prometheus_url": args.prometheus_url, "traces_url": args.traces_url}
    links = Links(traces=args.traces, **{k: v for k, v in urls.items() if v})
    config = load_config_or_builtins(args.config_file)
    if args.format != "files":
        from .generate import dashboard_configmaps, prometheus_rule

        text = prometheus_rule(config) if args.format == "prometheusrule" else dashboard_configmaps(config, links)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
        return EXIT_OK
    if not args.out:
        raise ConfigError("generate: --out DIR is required (unless --format prometheusrule or grafana-configmaps)")
    written = generate(config, args.out, links)
    print(f"wrote {len(written)} files under {args.out}")
    return EXIT_OK


COMMANDS: list[Command] = [
    Command("probe", "probe one target once and show its phases (curl -w / httpstat style)", _probe_args, _cmd_probe),
    Command("serve", "run the exporter: /probe, /metrics, status page", _serve_args, _cmd_serve),
    Command("check-config", "validate a config file (exit 0 if valid, 2 if not)", _check_config_args, _cmd_check_config),
    Command("demo", "start local demo targets and probe each once", _demo_args, _cmd_demo),
    Command("generate", "write dashboards, rule files and Grafana provisioning from the SLO spec", _generate_args, _cmd_generate),
    Command("diagnose", "walk seed 002's decision tree for a URL: DNS, connect, TLS, keep-alive, stream", _diagnose_args,
            _cmd_diagnose),
]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="connhealth", description="Connection-health prober and Prometheus exporter.")
    parser.add_argument("--version", action="version", version=f"connhealth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for command in COMMANDS:
        command.add_args(sub.add_parser(command.name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # serve --workers starts its workers with the same arguments
    run = {c.name: c.run for c in COMMANDS}[args.command]
    try:
        code = run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except ConfigError as exc:  # the one place a usage/config error becomes exit 2
        print(f"connhealth: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"connhealth: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except BrokenPipeError:
        # `connhealth probe ... | head -1`: the reader left; say nothing. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBE_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
