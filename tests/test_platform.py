import pytest

from puller.errors import PlatformError, UsageError
from puller.platform import Platform, host_platform, parse_platform, select


def test_arm64_v8_is_no_variant():
    assert Platform("linux", "arm64", "v8") == Platform("linux", "arm64")
    assert parse_platform("linux/arm64/v8") == parse_platform("linux/arm64")


def test_parse_and_str():
    assert str(parse_platform("linux/arm/v6")) == "linux/arm/v6"
    assert parse_platform("linux/arm").variant == "v7"
    assert parse_platform("linux/x86_64") == Platform("linux", "amd64")
    for bad in ("linux", "linux/", "a/b/c/d", "/amd64"):
        with pytest.raises(UsageError):
            parse_platform(bad)


def test_host_platform_is_go_names(monkeypatch):
    import os
    real = os.uname()

    def fake(machine):
        return lambda: os.uname_result((real.sysname, real.nodename, real.release, real.version, machine))
    monkeypatch.setattr(os, "uname", fake("x86_64"))
    assert host_platform() == Platform("linux", "amd64")
    monkeypatch.setattr(os, "uname", fake("aarch64"))
    assert host_platform() == Platform("linux", "arm64")


def test_select_skips_attestations_and_falls_back_on_arm_variants():
    entries = [(Platform("linux", "amd64"), "amd64"), (Platform("unknown", "unknown"), "att"),
               (Platform("linux", "arm", "v6"), "armv6"), (Platform("linux", "arm64"), "arm64")]
    assert select(entries, Platform("linux", "arm64", "v8")) == "arm64"
    assert select(entries, Platform("linux", "arm", "v7")) == "armv6"  # v7 host runs v6
    with pytest.raises(PlatformError) as e:
        select(entries, Platform("linux", "s390x"))
    assert "linux/amd64" in str(e.value) and "linux/arm/v6" in str(e.value)
    assert "unknown" not in str(e.value)
    with pytest.raises(PlatformError):
        select([(Platform("linux", "arm", "v7"), "x")], Platform("linux", "arm", "v6"))
