"""Device facts for `compress`: the cgroup quota and affinity decide the usable cores, profiles are
emulated by their thread count (capped at this host), and nulls in a profile come from this host."""
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast.compress import device


@given(quota=st.integers(1000, 10**7), period=st.integers(1000, 10**6))
def test_a_cgroup_quota_is_quota_over_period_cores(quota, period):
    assert device.quota_cores(f"{quota} {period}\n") == pytest.approx(quota / period)


def test_no_quota_is_none():
    assert device.quota_cores("max 100000") is None


def test_usable_cores_never_exceed_the_affinity_mask_nor_the_quota(monkeypatch, tmp_path):
    allowed = len(os.sched_getaffinity(0))
    assert 1 <= device.usable_cores() <= allowed
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")  # half a core: rounded up to one
    monkeypatch.setattr(device, "CGROUP_V2", cpu_max)
    assert device.usable_cores() == 1
    cpu_max.write_text(f"{(allowed + 8) * 100000} 100000\n")  # a quota above the mask: the mask wins
    assert device.usable_cores() == allowed


def test_auto_reads_this_host_and_a_profile_is_capped_at_its_cores():
    here = device.host()
    auto = device.resolve(dict(name="auto", tickers=50))
    assert (auto.threads, auto.ram_mb, auto.isa, auto.vnni) == (here["threads"], here["ram_mb"], here["isa"],
                                                                 here["vnni"])
    assert not auto.emulated and auto.ram_mb > 0 and auto.isa
    big = device.resolve(dict(name="big", threads=here["threads"] + 3, ram_mb=1024, isa="AVX2", vnni=False,
                              tickers=10, latency_ms=5.0, size_mb=1.0))
    assert big.threads == here["threads"] and big.emulated
    assert (big.ram_mb, big.isa, big.vnni, big.latency_ms) == (1024, "AVX2", False, 5.0)
    assert "emulated" in big.describe() and "p95 <= 5 ms" in big.describe()


def test_vnni_comes_from_the_cpu_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_vnni\n")
    monkeypatch.setattr(device, "CPUINFO", info)
    assert device.host()["vnni"] is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert device.host()["vnni"] is False


def test_every_profile_in_conf_is_a_valid_device():
    from omegaconf import OmegaConf

    from conftest import CONF
    from forecast.config.compress import DeviceProfile

    profiles = sorted(p.stem for p in (device.Path(CONF) / "device").glob("*.yaml"))
    assert {"auto", "edge_box", "phone"} <= set(profiles)
    for name in profiles:
        values = OmegaConf.to_container(OmegaConf.load(device.Path(CONF) / "device" / f"{name}.yaml"))
        DeviceProfile.model_validate(values)
        assert device.resolve(values).threads >= 1
