"""``connhealth probe``'s curl-like options, turned into an ad-hoc module on top of ``--module``.

The options are written into the module's raw config section (the same keys a
config file uses) and the module is parsed again by its prober, so every value
is validated exactly as in a file. Which options apply is read from the
prober's own settings type (a ``tls_config`` field, a ``headers`` field, ...),
never from the prober's name.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .config import BUILTIN_MODULES_YAML, Config, Module, default_module_for, parse_module
from .failures import ProbeFailure
from .net.resolve import is_ip
from .probers import PROBERS
from .schema import ConfigError, ipv6_hint, split_host_port

MAX_DATA_FILE = 16 << 20  # -d @FILE: a request body, not a disk image

# flag -> (settings field it needs, how to write it into the raw section)
_TLS_FLAGS = {"insecure": "-k/--insecure", "cacert": "--cacert", "cert": "--cert", "key": "--key", "sni": "--sni"}
_HTTP_FLAGS = {"headers": "-H", "method": "-X", "data": "-d", "http_version": "--http1.1/--http2"}


def build_module(config: Config, args: argparse.Namespace) -> tuple[Module, list[str]]:
    """The module ``probe`` runs, and notes for the user (e.g. a raised timeout)."""
    name = args.module or default_module_for(args.target)
    if name not in config.modules:
        raise ConfigError(f"unknown module {name!r} (known: {', '.join(sorted(config.modules))})")
    module = config.modules[name]
    check_target(args.target, module.prober)
    notes: list[str] = []
    section = _overrides(module, args)
    if section:
        module = _reparse(config, module, section)
    resolver = module.resolver
    if args.nameserver:
        resolver = dataclasses.replace(resolver, nameservers=tuple(_host_port(ns, "--nameserver", 53) for ns in args.nameserver))
    overrides = tuple(_resolve(text) for text in args.resolve) + tuple(_connect_to(text) for text in args.connect_to)
    if overrides:
        resolver = dataclasses.replace(resolver, overrides=overrides)
    module = dataclasses.replace(module, resolver=resolver)
    if args.timeout is not None and module.timeout and args.timeout > module.timeout:
        notes.append(f"--timeout {args.timeout:g}s raises module {name}'s timeout of {module.timeout:g}s")
        module = dataclasses.replace(module, timeout=args.timeout)
    return module, notes


def _overrides(module: Module, args: argparse.Namespace) -> dict[str, Any]:
    """The raw-section keys the flags set; an error when a flag does not apply to the module's prober."""
    fields = {f.name for f in dataclasses.fields(module.settings)} if dataclasses.is_dataclass(module.settings) else set()
    out: dict[str, Any] = {}
    used = [flag for dest, flag in _TLS_FLAGS.items() if getattr(args, dest)]
    if used:
        if "tls_config" not in fields or getattr(module.settings, "tls", True) is False:
            raise ConfigError(f"{', '.join(used)}: module {module.name!r} does not use TLS"
                              + (" (try --module tls_connect)" if "tls" in fields else ""))
        tls: dict[str, Any] = {}
        if args.insecure:
            tls["insecure_skip_verify"] = True
        for dest, key in (("cacert", "ca_file"), ("cert", "cert_file"), ("key", "key_file")):
            value = getattr(args, dest)
            if value is not None:
                if not Path(value).is_file():
                    raise ConfigError(f"--{dest}: file {value!r} does not exist")
                tls[key] = value
        if args.sni is not None:
            tls["server_name"] = args.sni
        out["tls_config"] = tls
    used = [flag for dest, flag in _HTTP_FLAGS.items() if getattr(args, dest)]
    if used and not {"headers", "method", "body"} <= fields:
        raise ConfigError(f"{', '.join(used)}: prober {module.prober!r} sends no HTTP request (module {module.name!r})")
    if args.headers:
        out["headers"] = dict(_header(text) for text in args.headers)
    if args.data is not None:
        out["body"] = _data(args.data)
        if not any(k.lower() == "content-type" for k in out.get("headers", {})) and \
                not any(k.lower() == "content-type" for k, _ in module.settings.headers):
            out.setdefault("headers", {})["Content-Type"] = "application/x-www-form-urlencoded"  # as curl
        if args.method is None:
            out["method"] = "POST"
    if args.method is not None:
        out["method"] = args.method
    if args.http_version:
        out["enable_http2"] = args.http_version == "2"
    if args.ip:
        if "preferred_ip_protocol" not in fields:
            raise ConfigError(f"-4/-6: prober {module.prober!r} has no IP protocol choice")
        out["preferred_ip_protocol"] = args.ip
        out["ip_protocol_fallback"] = False
    return out


def _reparse(config: Config, module: Module, section: dict[str, Any]) -> Module:
    raw = copy.deepcopy(config.raw_modules.get(module.name) or yaml.safe_load(BUILTIN_MODULES_YAML)["modules"].get(module.name))
    if not isinstance(raw, dict):
        raise ConfigError(f"module {module.name!r} cannot take command-line options")
    key = PROBERS[module.prober].section
    merged = dict(raw.get(key) or {})
    if "headers" in section:
        merged["headers"] = {**(merged.get("headers") or {}), **section.pop("headers")}
    if "tls_config" in section:
        merged["tls_config"] = {**(merged.get("tls_config") or {}), **section.pop("tls_config")}
    merged.update(section)
    raw[key] = merged
    return parse_module(module.name, raw, f"module {module.name} with command-line options")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"-H {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _data(text: str) -> str:
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    try:
        size = path.stat().st_size
        if size > MAX_DATA_FILE:
            raise ConfigError(f"-d {text}: file is {size} bytes, more than the {MAX_DATA_FILE >> 20} MiB allowed")
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"-d {text}: cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"-d {text}: file is not UTF-8 text") from None


def _host_port(text: str, flag: str, default_port: int | None = None) -> tuple[str, int]:
    try:
        return split_host_port(text, default_port=default_port)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}{ipv6_hint(text)}") from None


def _port(text: str, flag: str, whole: str, empty_ok: bool) -> int:
    if not text and empty_ok:
        return 0
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{flag} {whole!r}: invalid port {text!r}")
    return int(text)


def _resolve(text: str) -> tuple[str, int, str, int]:
    """curl's --resolve HOST:PORT:ADDR (ADDR may be [v6] or bare v6)."""
    host, _, rest = text.partition(":")
    port_text, _, addr = rest.partition(":")
    addr = addr.strip("[]")
    if not host or not addr:
        raise ConfigError(f"--resolve {text!r}: expected HOST:PORT:ADDR, e.g. example.com:443:127.0.0.1")
    if not is_ip(addr):
        raise ConfigError(f"--resolve {text!r}: {addr!r} is not an IP address")
    host = "" if host == "*" else host.lower()  # curl: *:443:ADDR for every host
    return host, _port(port_text, "--resolve", text, False), addr, 0


def _connect_to(text: str) -> tuple[str, int, str, int]:
    """curl's --connect-to HOST1:PORT1:HOST2:PORT2; an empty part matches any / keeps the original."""
    parts = _split_brackets(text)
    if len(parts) != 4:
        raise ConfigError(f"--connect-to {text!r}: expected HOST1:PORT1:HOST2:PORT2 (parts may be empty)")
    return (parts[0].lower(), _port(parts[1], "--connect-to", text, True), parts[2],
            _port(parts[3], "--connect-to", text, True))


def _split_brackets(text: str) -> list[str]:
    parts, current, depth = [], "", 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        else:
            current += ch
    return [*parts, current]


# --- targets: one line that says what to type instead -------------------------------------
# The URL schemes some prober takes (http, sse: http(s); websocket: ws(s) too).
_SCHEMES = ("http", "https", "ws", "wss")


def target_hint(target: str, prober: str) -> str:
    if "://" in target:
        scheme = target.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            return (f"; {scheme}:// is not supported: use an http:// or https:// URL (ws:// or wss:// for the "
                    "websocket prober), or host:port for the tcp prober")
        return ipv6_hint(target)
    hint = ipv6_hint(target)
    if hint:
        return hint
    if prober == "tcp" and ":" not in target and target.strip():
        return f"; did you mean http://{target}/ or {target}:PORT?"
    return ""


def check_target(target: str, prober: str) -> None:
    if "://" in target and target.split("://", 1)[0].lower() not in _SCHEMES:
        # Without this, ftp://host/ falls to tcp_connect and reads as "invalid port '//host/'".
        raise ConfigError(f"invalid target {target!r}{target_hint(target, prober)}")
    try:
        PROBERS[prober].check_target(target)
    except ProbeFailure as exc:
        message = str(exc).removeprefix("target ")
        raise ConfigError(f"invalid target for prober {prober}: {message}{target_hint(target, prober)}") from None

