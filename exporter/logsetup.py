"""Log set-up for every command: ``--log.level`` and ``--log.format logfmt|json`` (blackbox's two formats).

Structured fields travel as ``extra={"kv": {...}}`` and become logfmt pairs or
JSON members. Callers pass values already fit for a log (targets as the
prober shows them, ``Prober.display_target``); nothing here can tell a secret
from a target.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FORMATS = ("logfmt", "json")
_HANDLER_NAME = "connhealth"
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
          logging.CRITICAL: "error"}


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {"ts": _timestamp(record), "level": _NAMES.get(record.levelno, record.levelname.lower()),
                              "logger": record.name, "msg": record.getMessage()}
    fields.update(getattr(record, "kv", None) or {})
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    text = value if isinstance(value, str) else repr(value) if isinstance(value, (int, float)) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Configure the ``connhealth`` loggers (and the root, for libraries' warnings) once per process."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # ours from an earlier call; others' (a test's capture) stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    logging.getLogger("connhealth").setLevel(LEVELS[level])
