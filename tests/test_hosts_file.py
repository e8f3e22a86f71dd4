"""The system resolver's "files" source read by us (exporter/net/resolve.py HostsFile), as Go's resolver reads it.

Against glibc on this machine's own files (the same answer getaddrinfo gives), and on files written
here: file order, case, aliases, comments, zone entries, nsswitch order, a changed file, a big file.
"""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from exporter.net import resolve
from exporter.net.resolve import HostsFile, NoAddressError, families, load_hosts


def _glibc_first(host: str, family: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    return next((str(i[4][0]) for i in infos if i[0] == family), None)


async def test_the_machines_own_hosts_file_resolves_as_getaddrinfo_does() -> None:
    names = load_hosts(resolve.HOSTS_PATH, resolve.NSSWITCH_PATH)
    if names is None:
        pytest.skip("this machine's nsswitch.conf does not put files first: getaddrinfo answers every name")
    assert names, "an /etc/hosts with no name"
    hosts = HostsFile()
    for name in sorted(names)[:50]:
        for spelling in (name, name.upper()):
            listed = await hosts.lookup(spelling)
            assert listed is not None, spelling
            for family in (socket.AF_INET, socket.AF_INET6):
                ours = next((ip for ip, fam in listed if fam == family), None)
                assert ours == _glibc_first(spelling, family), (spelling, family)
    # A name the file does not list, and a trailing dot (glibc's files source does not match it): getaddrinfo's.
    assert await hosts.lookup("no-such-name.invalid") is None
    assert await hosts.lookup(sorted(names)[0] + ".") is None


def _files(tmp_path: Path, hosts: str, nsswitch: str = "hosts: files dns\n") -> HostsFile:
    (tmp_path / "hosts").write_text(hosts)
    (tmp_path / "nsswitch.conf").write_text(nsswitch)
    return HostsFile(str(tmp_path / "hosts"), str(tmp_path / "nsswitch.conf"))


async def test_file_order_aliases_case_comments_and_zones(tmp_path: Path) -> None:
    hosts = _files(tmp_path, "# a comment line\n"
                             "fe80::1%eth0 zoned.test\n"  # a zone: skipped, as check_host refuses zones
                             "192.0.2.10  web.test  Alias.Test   # trailing comment\n"
                             "2001:db8::10 web.test\n"
                             "192.0.2.11  web.test\n"
                             "not-an-ip   broken.test\n"
                             "192.0.2.12\n")
    assert await hosts.lookup("WEB.test") == (("192.0.2.10", socket.AF_INET), ("2001:db8::10", socket.AF_INET6),
                                              ("192.0.2.11", socket.AF_INET))
    assert await hosts.lookup("alias.test") == (("192.0.2.10", socket.AF_INET),)
    assert await hosts.lookup("zoned.test") is None
    assert await hosts.lookup("broken.test") is None


async def test_resolve_uses_the_file_with_the_family_preference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "HOSTS", _files(tmp_path, "192.0.2.10 web.test\n2001:db8::10 web.test\n192.0.2.20 v4only.test\n"))
    assert await resolve.resolve("web.test", families("ip6", True)) == ("2001:db8::10", socket.AF_INET6)
    assert await resolve.resolve("web.test", families("ip4", False)) == ("192.0.2.10", socket.AF_INET)
    assert await resolve.resolve("v4only.test", families("ip6", True)) == ("192.0.2.20", socket.AF_INET)
    with pytest.raises(NoAddressError, match="v4only.test has no ipv6 address"):
        await resolve.resolve("v4only.test", families("ip6", False))


async def test_dns_before_files_leaves_every_name_to_getaddrinfo(tmp_path: Path) -> None:
    hosts = _files(tmp_path, "192.0.2.10 web.test\n", nsswitch="hosts: dns files\n")
    assert await hosts.lookup("web.test") is None


async def test_a_changed_file_is_read_again_and_a_big_one_is_left_to_getaddrinfo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "HOSTS_CHECK_EVERY", 0.0)  # look at the mtimes on every lookup
    hosts = _files(tmp_path, "192.0.2.10 web.test\n")
    assert await hosts.lookup("web.test") == (("192.0.2.10", socket.AF_INET),)
    (tmp_path / "hosts").write_text("192.0.2.99 web.test\n# now longer, so the size differs too\n")
    assert await hosts.lookup("web.test") == (("192.0.2.99", socket.AF_INET),)
    big = "192.0.2.10 web.test\n" + "".join(f"0.0.0.0 blocked{i}.test\n" for i in range(resolve.HOSTS_MAX_BYTES // 20))
    (tmp_path / "hosts").write_text(big)
    assert len(big) > resolve.HOSTS_MAX_BYTES
    assert await hosts.lookup("web.test") is None


async def test_concurrent_lookups_during_the_first_read_ask_getaddrinfo_meanwhile(tmp_path: Path) -> None:
    hosts = _files(tmp_path, "192.0.2.10 web.test\n")
    first, second = await asyncio.gather(hosts.lookup("web.test"), hosts.lookup("web.test"))
    assert first == (("192.0.2.10", socket.AF_INET),)
    assert second is None  # the file was being read: this one goes to getaddrinfo
    assert await hosts.lookup("web.test") == first
