"""The ``connhealth`` command line."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence

from .config import Config, ConfigError, ResolverConfig, builtin_modules, default_module_for, load_config
from .engine import run_probe
from .failures import ProbeFailure
from .render import render

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

    d = sub.add_parser("demo", help="start local demo targets and probe each once")
    d.add_argument("--json", action="store_true", help="print one JSON object per probe")
    return parser


def _load(path: str | None) -> Config:
    if path is None:
        return Config(modules=builtin_modules())
    return load_config(path)


def _cmd_probe(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
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
    except ConfigError as exc:
        print(f"connhealth: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(run_probe(args.target, module, args.timeout))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result, color=sys.stdout.isatty()))
    return EXIT_OK if result.success else EXIT_PROBE_FAILED


def _check_target(target: str, prober: str) -> None:
    from .probers import http
    from .probers.connect import split_host_port

    try:
        if prober == "http":
            http.check_target(target)
        else:
            split_host_port(target)
    except (ProbeFailure, ValueError) as exc:
        raise ConfigError(f"invalid target for prober {prober}: {exc}") from None


def _nameserver(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or text.count(":") > 1 and not text.startswith("["):
        return text.strip("[]"), 53
    return host.strip("[]"), int(port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"probe": _cmd_probe, "demo": _cmd_demo}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
