"""Probes: where readings come from. `NvmlProbe` on a real GPU; the simulated
device (simulation.py) implements the same `read()` for tests and benchmarks.

Per-process numbers are not always there. In containers NVML may report
`usedGpuMemory` as None, or report host PIDs that do not exist in our PID
namespace. The probe then says so (`per_process_available=False` with a note) and
the policy attributes the device's used memory, less our own known allocations,
to one "unattributed" neighbour.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from .data import DeviceReading, ProcessReading

# /proc/net/tcp state column: 0A is LISTEN.
_TCP_LISTEN = "0A"


class Probe(Protocol):
    def read(self) -> DeviceReading: ...


class NvmlProbe:
    """Reads one GPU through pynvml. `nvml` is the pynvml module, injectable for tests.

    Create it where the GPU is visible (the controller replica) and call `close()`
    when done; nothing happens at import time.
    """

    def __init__(self, gpu_index: int = 0, nvml: Any = None, proc_root: Path = Path("/proc")):
        if nvml is None:
            import pynvml as nvml  # imported here: machines without a driver can still import us
        self._nvml = nvml
        self._proc = ProcTable(proc_root)
        self.gpu_index = gpu_index
        nvml.nvmlInit()
        self._handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)

    def close(self) -> None:
        self._nvml.nvmlShutdown()

    def read(self) -> DeviceReading:
        memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        raw = self._processes()
        missing = [p.pid for p in raw if p.usedGpuMemory is None]
        foreign = [p.pid for p in raw if not self._proc.visible(p.pid)]
        if missing or foreign:
            note = _why_no_per_process(missing, foreign)
            return DeviceReading(self.gpu_index, memory.total, memory.used, memory.free,
                                 per_process_available=False, note=note)
        ports = self._proc.listening_ports()
        processes = tuple(
            ProcessReading(p.pid, p.usedGpuMemory, self._proc.name(p.pid), tuple(sorted(ports.get(p.pid, ()))))
            for p in raw)
        return DeviceReading(self.gpu_index, memory.total, memory.used, memory.free, processes)

    def _processes(self) -> list[Any]:
        """Compute and graphics processes, each PID once (a process may be in both)."""
        seen: dict[int, Any] = {}
        for fetch in (self._nvml.nvmlDeviceGetComputeRunningProcesses,
                      self._nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                for process in fetch(self._handle):
                    seen.setdefault(process.pid, process)
            except self._nvml.NVMLError:
                continue  # e.g. graphics queries unsupported on a compute-only board
        return list(seen.values())


def _why_no_per_process(missing: list[int], foreign: list[int]) -> str:
    parts = []
    if missing:
        parts.append(f"driver reports no per-process memory for pids {missing[:5]}")
    if foreign:
        parts.append(f"pids {foreign[:5]} are not in this PID namespace (container?)")
    return "; ".join(parts)


class ProcTable:
    """Process names and listening TCP ports from /proc, without psutil."""

    def __init__(self, root: Path = Path("/proc")):
        self.root = root

    def visible(self, pid: int) -> bool:
        return (self.root / str(pid)).is_dir()

    def name(self, pid: int) -> str:
        try:
            return (self.root / str(pid) / "comm").read_text().strip()
        except OSError:
            return ""

    def listening_ports(self) -> dict[int, set[int]]:
        """pid -> ports it listens on: socket inodes from /proc/net/tcp{,6}, matched to
        each process's /proc/<pid>/fd links. Processes we may not inspect are skipped."""
        port_by_inode = self._listening_inodes()
        if not port_by_inode:
            return {}
        ports: dict[int, set[int]] = {}
        for entry in self.root.iterdir():
            if entry.name.isdigit():
                found = self._sockets_of(entry, port_by_inode)
                if found:
                    ports[int(entry.name)] = found
        return ports

    def _listening_inodes(self) -> dict[str, int]:
        inodes: dict[str, int] = {}
        for table in ("tcp", "tcp6"):
            try:
                lines = (self.root / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                if len(fields) > 9 and fields[3] == _TCP_LISTEN:
                    inodes[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
        return inodes

    def _sockets_of(self, pid_dir: Path, port_by_inode: dict[str, int]) -> set[int]:
        found: set[int] = set()
        try:
            links = list((pid_dir / "fd").iterdir())
        except OSError:
            return found
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith("socket:["):
                port = port_by_inode.get(target[8:-1])
                if port is not None:
                    found.add(port)
        return found
