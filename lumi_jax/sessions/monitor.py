"""Resource readings: CPU, memory, disk, accelerator memory and the lumi processes.

`lumi monitor` (`make monitor`) shows them as a live table until Ctrl-C, or once with `--once`.
Sessions use `PeakTracker` to record the peak memory and the bytes written while they ran.

Accelerator memory is read in two ways, on purpose. A separate monitor process must not import
JAX: initialising the GPU backend would reserve most of the GPU's memory (XLA preallocates) next
to the training it is watching. So the monitor asks `nvidia-smi`, which only reads. Inside a
session, where JAX already runs, the devices' own `memory_stats()` give exact peaks.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from lumi_jax.errors import UserError
from lumi_jax.tables import print_table, whole_values

GIB = 1024**3


def format_bytes(count: float | None) -> str:
    if count is None:
        return "n/a"
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def nvidia_smi_memory() -> list[dict[str, Any]]:
    """GPU memory per device from nvidia-smi, without touching the GPU allocator; [] if none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=index,name,memory.used,memory.total"
    try:
        output = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    devices = []
    for line in output.strip().splitlines():
        index, name, used_mib, total_mib = (part.strip() for part in line.split(","))
        devices.append({
            "device": f"gpu:{index} {name}",
            "used_bytes": int(float(used_mib) * 1024**2),
            "total_bytes": int(float(total_mib) * 1024**2),
        })
    return devices


def jax_memory() -> list[dict[str, Any]]:
    """Memory of the devices JAX already uses in this process; [] when JAX is not running here.

    CPU devices report no statistics, so on a CPU-only machine this is [] as well.
    """
    jax = sys.modules.get("jax")
    if jax is None:
        return []
    devices = []
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        if "bytes_in_use" in stats:
            devices.append({
                "device": f"{device.platform}:{device.id} {device.device_kind}",
                "used_bytes": stats["bytes_in_use"],
                "peak_bytes": stats.get("peak_bytes_in_use"),
                "total_bytes": stats.get("bytes_limit"),
            })
    return devices


def accelerator_memory() -> list[dict[str, Any]]:
    return jax_memory() or nvidia_smi_memory()


def is_lumi_process(cmdline: list[str]) -> bool:
    text = " ".join(cmdline)
    return "lumi_jax" in text or any(Path(part).name == "lumi" for part in cmdline[:2])


@dataclass
class ProcessWatch:
    """Keeps psutil.Process objects between readings, so their CPU percentages mean something."""

    processes: dict[int, psutil.Process] = field(default_factory=dict)

    def lumi_processes(self) -> list[dict[str, Any]]:
        rows = []
        seen = set()
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = process.info["cmdline"] or []
                if process.pid == os.getpid() or not is_lumi_process(cmdline):
                    continue
                watched = self.processes.setdefault(process.pid, process)
                seen.add(process.pid)
                with watched.oneshot():
                    rows.append({
                        "pid": process.pid,
                        "command": " ".join(cmdline)[:80],
                        "cpu_percent": watched.cpu_percent(),
                        "rss_bytes": watched.memory_info().rss,
                        "running_s": time.time() - watched.create_time(),
                    })
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for pid in set(self.processes) - seen:
            del self.processes[pid]
        return rows


def take_reading(path: Path, watch: ProcessWatch) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(path))  # what df reports: used, free for you, and Use% = used / (used + free)
    return {
        "cpu_percent": psutil.cpu_percent(),
        "cpu_count": psutil.cpu_count(),
        "memory_used_bytes": memory.total - memory.available,
        "memory_total_bytes": memory.total,
        "disk_path": str(path),
        "disk_used_bytes": disk.used,
        "disk_total_bytes": disk.total,
        "disk_free_bytes": disk.free,
        "disk_percent": math.ceil(disk.percent),  # df rounds up
        "accelerators": accelerator_memory(),
        "processes": watch.lumi_processes(),
    }


def reading_tables(reading: dict[str, Any]) -> Group:
    resources = Table(title="Resources", title_justify="left")
    resources.add_column("resource")
    resources.add_column("in use", justify="right")
    resources.add_column("total", justify="right")
    resources.add_column("%", justify="right")

    def add(name: str, used: float | None, total: float | None, percent: float | None = None) -> None:
        if percent is None and used is not None and total:
            percent = 100 * used / total
        resources.add_row(name, format_bytes(used), format_bytes(total), "" if percent is None else f"{percent:.0f}")

    resources.add_row("CPU", f"{reading['cpu_percent']:.0f}%", f"{reading['cpu_count']} cores", "")
    add("memory", reading["memory_used_bytes"], reading["memory_total_bytes"])
    add(f"disk ({reading['disk_path']}), {format_bytes(reading['disk_free_bytes'])} free", reading["disk_used_bytes"],
        reading["disk_total_bytes"], reading.get("disk_percent"))
    if reading["accelerators"]:
        for device in reading["accelerators"]:
            add(device["device"], device["used_bytes"], device["total_bytes"])
    else:
        resources.add_row("accelerator", "none detected", "", "")

    processes = Table(title="lumi processes", title_justify="left")
    for column in ("pid", "command", "CPU %", "RSS", "running"):
        processes.add_column(column, justify="left" if column == "command" else "right")
    for row in reading["processes"]:
        processes.add_row(
            str(row["pid"]), row["command"], f"{row['cpu_percent']:.0f}",
            format_bytes(row["rss_bytes"]), f"{row['running_s'] / 60:.1f} min",
        )
    if not reading["processes"]:
        processes.add_row("", "none running", "", "", "")
    return Group(whole_values(resources), whole_values(processes))


class PeakTracker:
    """Samples this process's memory in a background thread while a session runs.

    Peak RSS comes from the kernel's own high-water mark (getrusage) for this process, and from
    sampling for its children (a data-preparation worker pool, for example). Disk written is the
    kernel's count of bytes this process sent to storage. Accelerator peaks come from JAX.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="lumi-peak-tracker", daemon=True)
        self._children_peak = 0
        self._written_at_start = self._written_bytes()

    def _written_bytes(self) -> int | None:
        try:
            return self._process.io_counters().write_bytes
        except (AttributeError, psutil.Error):  # not every platform counts it
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                children = self._process.children(recursive=True)
                total = sum(child.memory_info().rss for child in children)
            except psutil.Error:
                continue
            self._children_peak = max(self._children_peak, total)

    def __enter__(self) -> PeakTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        if sys.platform == "darwin":
            self_peak //= 1024  # bytes on macOS
        written_now = self._written_bytes()
        written = None
        if written_now is not None and self._written_at_start is not None:
            written = written_now - self._written_at_start
        accelerators = jax_memory()
        peaks = [d.get("peak_bytes") for d in accelerators if d.get("peak_bytes") is not None]
        return {
            "peak_rss_bytes": self_peak,
            "peak_children_rss_bytes": self._children_peak,
            "peak_accelerator_memory_bytes": max(peaks) if peaks else None,
            "accelerators": accelerators,
            "disk_written_bytes": written,
        }


# ---------------------------------------------------------------------------------------------
# `lumi monitor`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one reading and exit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    parser.add_argument("--path", default=".", help="the disk to report (default: this directory)")


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UserError(f"--interval {args.interval}: must be positive; use e.g. --interval 2")
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"--path {path}: no such directory; give an existing directory")
    console = Console()
    watch = ProcessWatch()
    psutil.cpu_percent()  # the first call only starts the measurement window
    watch.lumi_processes()
    if args.once:
        time.sleep(0.5)
        print_table(console, reading_tables(take_reading(path, watch)))
        return 0
    try:
        with Live(console=console, auto_refresh=False) as live:
            delay = 0.5  # the first reading as soon as CPU percentages mean something
            while True:
                time.sleep(delay)
                live.update(reading_tables(take_reading(path, watch)), refresh=True)
                delay = args.interval
    except KeyboardInterrupt:
        pass
    return 0
