"""Config parsing: invalid configs fail with a message naming the offending path,
valid ones (including an unmodified real-world blackbox.yml) load with defaults.

Each invalid config is a small file in fixtures/bad_configs/ whose first line
is ``# expect: <substring of the error message>``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import (
    ConfigError,
    ResolverConfig,
    SchedulerConfig,
    builtin_modules,
    default_module_for,
    load_config,
    parse_config,
    parse_duration,
)
from exporter.net.tls import TLSConfig
from exporter.probers.http import HTTPProbeConfig
from exporter.probers.tcp import TCPProbeConfig

pytestmark = pytest.mark.timeout(30)

FIXTURES = Path(__file__).parent / "fixtures"
BAD = sorted((FIXTURES / "bad_configs").glob("*.yml"))
README = Path(__file__).parent.parent / "README.md"


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"# expect: (.+)", first)
    assert m, f"{path.name}: first line must be '# expect: <message substring>'"
    return m.group(1)


def test_there_are_bad_config_fixtures():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config(path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert _expected(path) in str(info.value)


# Configs whose targets rely on the built-in modules (http_2xx) to get as far as their error.
_NEEDS_BUILTINS = {"unknown_module_in_targets", "unknown_module_in_target_files", "target_interval_too_small",
                   "bad_label_name", "reserved_label_name", "target_missing"}
BAD_STANDALONE = [p for p in BAD if p.stem not in _NEEDS_BUILTINS]


@pytest.mark.parametrize("path", BAD_STANDALONE, ids=[p.stem for p in BAD_STANDALONE])
def test_bad_config_without_builtins_fails_the_same_way(path: Path):
    # The same text through parse_config without the built-ins.
    with pytest.raises(ConfigError, match=re.escape(_expected(path))):
        parse_config(path.read_text(), str(path), with_builtins=False)


def test_unreadable_config():
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(FIXTURES / "does-not-exist.yml")


# ---------------------------------------------------------------------------
# valid configs
# ---------------------------------------------------------------------------


def test_empty_config_has_only_builtins():
    config = parse_config("", "empty")
    assert set(config.modules) == {"http_2xx", "http_post_2xx", "tcp_connect", "tls_connect"}
    assert config.targets == () and config.target_files == ()
    assert config.scheduler == SchedulerConfig()


def test_builtin_modules_defaults():
    mods = builtin_modules()
    http = mods["http_2xx"]
    assert http.prober == "http" and http.timeout is None
    assert http.settings == HTTPProbeConfig()
    assert http.settings.valid_status_codes == ()  # any 2xx
    assert http.settings.method == "GET" and http.settings.follow_redirects is True
    assert http.settings.enable_http2 is True and http.settings.body_size_limit == 0  # as blackbox
    assert http.settings.preferred_ip_protocol == "ip6" and http.settings.ip_protocol_fallback is True  # as blackbox
    assert http.phase_timeouts == () and http.resolver == ResolverConfig()
    assert mods["http_post_2xx"].settings.method == "POST"
    assert mods["tcp_connect"].settings == TCPProbeConfig()
    assert mods["tls_connect"].settings.tls is True
    assert mods["tls_connect"].settings.tls_config == TLSConfig()


def test_real_world_blackbox_yml_loads_unchanged():
    config = load_config(FIXTURES / "blackbox.yml")
    assert {"http_2xx_example", "http_post_2xx", "http_2xx", "tcp_connect_example", "tls_connect",
            "ssh_banner", "smtp_starttls", "tcp_connect", "http_post_2xx"} <= set(config.modules)
    ex = config.modules["http_2xx_example"]
    assert ex.timeout == 5.0
    h = ex.settings
    assert h.valid_http_versions == ("HTTP/1.1", "HTTP/2.0")
    assert h.valid_status_codes == ()
    assert h.headers == (("Host", "vhost.example.com"), ("Accept-Language", "en-US"), ("Origin", "example.com"))
    # Body regexps are RE2 over the body's bytes (Go's regexp.Match)
    assert [r.pattern for r in h.fail_if_body_matches_regexp] == [b"Could not connect to database"]
    assert [r.pattern for r in h.fail_if_body_not_matches_regexp] == [b"Download the latest version here"]
    (cookie,) = h.fail_if_header_matches
    assert (cookie.header, cookie.regexp.pattern, cookie.allow_missing) == ("Set-Cookie", ".*", True)
    (acao,) = h.fail_if_header_not_matches
    assert (acao.header, acao.allow_missing) == ("Access-Control-Allow-Origin", False)
    assert acao.regexp.search("example.com") and acao.regexp.search("*") and not acao.regexp.search("evil.test")
    assert (h.preferred_ip_protocol, h.ip_protocol_fallback) == ("ip4", False)
    assert h.tls_config == TLSConfig()
    # a user module with a built-in's name replaces the built-in
    post = config.modules["http_post_2xx"]
    assert post.timeout == 5.0 and post.settings.body == "{}"
    assert post.settings.headers == (("Content-Type", "application/json"),)
    ssh = config.modules["ssh_banner"].settings
    assert [(s.expect.pattern if s.expect else None, s.send) for s in ssh.query_response] == [
        (b"^SSH-2.0-", None),
        (None, b"SSH-2.0-blackbox-ssh-check"),
    ]
    smtp = config.modules["smtp_starttls"].settings
    assert [s.starttls for s in smtp.query_response].count(True) == 1
    assert smtp.tls is False
    assert config.modules["tls_connect"].settings.tls is True
    assert "http_2xx_example" in config.modules


def _readme_config_example() -> str:
    text = README.read_text()
    section = text[text.index("## Configuration"):]
    m = re.search(r"```yaml\n(modules:\n.*?)```", section, re.S)
    assert m, "README's Configuration section has no yaml modules example"
    return m.group(1)


def test_readme_config_example_is_valid(tmp_path: Path):
    text = _readme_config_example()
    # The example names files that exist on the author's machine; point them at real ones.
    for name in ("/etc/ssl/private-ca.pem", "client.pem", "client.key"):
        assert name in text
        target = tmp_path / Path(name).name
        target.write_text("placeholder\n")
        text = text.replace(name, str(target))
    config = parse_config(text, "README")
    web = config.modules["web"]
    assert web.timeout == 5.0
    assert web.phase_timeouts == (("dns", 1.0), ("connect", 2.0), ("tls", 2.0), ("first_byte", 3.0))
    assert web.phase_timeout("tls") == 2.0 and web.phase_timeout("request") is None
    assert web.resolver == ResolverConfig(nameservers=(("10.0.0.53", 53),), timeout=2.0)
    assert web.settings.valid_status_codes == (200, 204)
    assert web.settings.tls_config.server_name == "api.example.com"
    assert web.settings.tls_config.min_version == "TLS12"
    smtp = config.modules["smtp_starttls"]
    assert smtp.settings.tls_config.server_name == "mail.example.com"


def test_targets_and_defaults():
    config = parse_config(
        """
scheduler:
  default_interval: 20s
targets:
  - https://api.example.test/health
  - target: db.example.test:5432
    labels: {service: db, region: eu}
  - target: https://api.example.test/other
    module: http_post_2xx
    interval: 1m30s
    timeout: 2500ms
target_files:
  - files: ["/etc/connhealth/targets/*.yml"]
    labels: {cluster: prod-1}
""",
        "targets",
    )
    first, second, third = config.targets
    assert (first.module, first.interval, first.timeout, first.labels) == ("http_2xx", 20.0, None, ())
    assert second.module == "tcp_connect"
    assert second.labels == (("region", "eu"), ("service", "db"))  # sorted
    assert (third.module, third.interval, third.timeout) == ("http_post_2xx", 90.0, 2.5)
    (files,) = config.target_files
    assert files.module is None and files.interval == 20.0 and files.labels == (("cluster", "prod-1"),)
    assert config.scheduler.default_interval == 20.0
    assert config.scheduler.concurrency == 256 and config.scheduler.min_interval == 1.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0), (0.5, 0.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["5", "5 s", "s", "", "-1s", "1s5", True, [1]])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match=r"^x: "):
        parse_duration(text, "x")


def test_module_timeout_zero_means_unset():
    m = parse_config("modules:\n  w:\n    prober: http\n    timeout: 0s\n").modules["w"]
    assert m.timeout is None


def test_resolver_nameserver_forms():
    text = 'modules:\n  w:\n    prober: http\n    resolver:\n      nameservers: ["127.0.0.1:5353", "127.0.0.2", "[::1]:5300"]\n'
    assert parse_config(text).modules["w"].resolver.nameservers == (("127.0.0.1", 5353), ("127.0.0.2", 53), ("::1", 5300))


@pytest.mark.parametrize(("target", "module"), [("https://x/", "http_2xx"), ("HTTP://x/", "http_2xx"), ("x:22", "tcp_connect")])
def test_default_module_for(target, module):
    assert default_module_for(target) == module
