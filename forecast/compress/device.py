"""The device a model is compressed for: a profile from `conf/device/*.yaml`, or this host (`auto`).

What this host can give a model is read where it is decided, not from `os.cpu_count()` (which
counts every core of the machine, also those a container may not use):
- cores: the CPU affinity mask (`os.sched_getaffinity`), capped by the cgroup's CPU quota
  (`/sys/fs/cgroup/cpu.max` on cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` on v1);
- RAM: psutil; ISA: `torch.backends.cpu.get_cpu_capability()`; VNNI (int8 dot products, what int8
  speed-ups depend on): the `avx512_vnni` / `avx_vnni` flags of `/proc/cpuinfo`.

A profile is emulated on this host by its thread count (capped at the usable cores, and then marked
`emulated`) and judged by its budgets; its ISA and RAM are reported, this host's are what is measured.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Device:
    name: str
    threads: int  # intra-op threads the model is measured with
    ram_mb: int
    isa: str
    vnni: bool
    tickers: int  # the cross-section one forecast call scores
    latency_ms: float | None  # budget on p95 latency of one cross-section (None: none)
    size_mb: float | None  # budget on the model file (None: none)
    emulated: bool  # the profile wanted more threads than this host has

    def describe(self) -> str:
        budget = ", ".join(b for b in [f"p95 <= {self.latency_ms:g} ms" if self.latency_ms else "",
                                        f"size <= {self.size_mb:g} MB" if self.size_mb else ""] if b)
        return (f"device {self.name}: {self.threads} thread(s){' (capped: emulated)' if self.emulated else ''}, "
                f"{self.ram_mb} MB RAM, {self.isa}{' +VNNI' if self.vnni else ''}, {self.tickers} tickers per call"
                f"{'; budget ' + budget if budget else ''}")

    def as_params(self) -> dict[str, str]:
        return {f"device.{k}": str(v) for k, v in asdict(self).items()}


def quota_cores(cpu_max: str) -> float | None:
    """Cores a cgroup v2 `cpu.max` line allows ('max 100000' -> None, '150000 100000' -> 1.5)."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def cgroup_cores() -> float | None:
    """The CPU quota of this process's cgroup in cores, or None when there is none."""
    if CGROUP_V2.exists():
        return quota_cores(CGROUP_V2.read_text())
    quota, period = CGROUP_V1 / "cpu.cfs_quota_us", CGROUP_V1 / "cpu.cfs_period_us"
    if quota.exists() and period.exists() and int(quota.read_text()) > 0:
        return int(quota.read_text()) / int(period.read_text())
    return None


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cores()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cpu_flags() -> set[str]:
    if not CPUINFO.exists():
        return set()
    for line in CPUINFO.read_text().splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            return set(line.partition(":")[2].split())
    return set()


def host() -> dict:
    """threads, ram_mb, isa, vnni of this host, as a process here sees them."""
    import psutil
    import torch

    return dict(threads=usable_cores(), ram_mb=psutil.virtual_memory().total // 2**20,
                isa=torch.backends.cpu.get_cpu_capability(), vnni=bool({"avx512_vnni", "avx_vnni"} & cpu_flags()))


def resolve(profile: dict) -> Device:
    """The device of a profile (`conf/device/<name>.yaml`); nulls are filled from this host."""
    here = host()
    values = {k: here[k] if profile.get(k) is None else profile[k] for k in here}
    threads = int(values["threads"])
    return Device(name=str(profile["name"]), threads=min(threads, here["threads"]), ram_mb=int(values["ram_mb"]),
                  isa=str(values["isa"]), vnni=bool(values["vnni"]), tickers=int(profile["tickers"]),
                  latency_ms=profile.get("latency_ms"), size_mb=profile.get("size_mb"),
                  emulated=threads > here["threads"])
