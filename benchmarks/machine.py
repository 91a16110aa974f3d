"""What the benchmark ran on (CPU, cores, RAM, load, library versions) and the process's peak RSS."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("numpy", "onnxruntime", "tokenizers", "torch", "diffusers", "transformers", "optimum-onnx", "optimum")


def _cpuinfo_field(name: str) -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _meminfo_gib(name: str) -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 2**20
    return None


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def describe() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": _cpuinfo_field("model name"),
        "cpu_flags_avx512f": "avx512f" in (_cpuinfo_field("flags") or "").split(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(_meminfo_gib("MemTotal") or 0, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux ≥ 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """VmHWM: the peak resident set size since the last reset (or since the process started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
