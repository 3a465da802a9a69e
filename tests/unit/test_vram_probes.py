"""Probes, profiles and the simulated device.

The NVML probe runs against a small fake of the pynvml calls it makes (no GPU
here), shaped as pynvml returns them: memory info with total/free/used in bytes,
process entries with `pid` and `usedGpuMemory` (None where the driver does not
say), and `NVMLError` for unsupported queries.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployments.vram.config import GIB
from deployments.vram.data import LoadReport
from deployments.vram.probes import NvmlProbe, ProcTable
from deployments.vram.profiles import ProfileKey, ProfileStore
from deployments.vram.simulation import NeighbourScript, SimulatedDevice


class FakeNvml:
    """The subset of pynvml the probe calls, with pynvml's shapes."""

    class NVMLError(Exception):
        pass

    def __init__(self, total: int, compute: list, graphics_error: bool = True):
        self.total, self.compute, self.graphics_error = total, compute, graphics_error
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("gpu", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        used = sum(p.usedGpuMemory or 0 for p in self.compute)
        return SimpleNamespace(total=self.total, free=self.total - used, used=used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return list(self.compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        if self.graphics_error:
            raise self.NVMLError("Not Supported")
        return []


def _proc(pid: int, used: int | None):
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


def _fake_proc_root(tmp_path: Path, pids: dict[int, str], listening: dict[int, int]) -> Path:
    """A /proc with comm files, /proc/net/tcp listing LISTEN sockets, and fd links."""
    root = tmp_path / "proc"
    (root / "net").mkdir(parents=True)
    rows = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"]
    for i, (pid, port) in enumerate(listening.items()):
        inode = 5000 + i
        rows.append(f"   {i}: 0100007F:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 "
                    f"00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0")
        fd = root / str(pid) / "fd"
        fd.mkdir(parents=True, exist_ok=True)
        os.symlink(f"socket:[{inode}]", fd / "3")
    (root / "net" / "tcp").write_text("\n".join(rows) + "\n")
    for pid, name in pids.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "comm").write_text(name + "\n")
    return root


def test_nvml_probe_reads_totals_processes_names_and_ports(tmp_path):
    root = _fake_proc_root(tmp_path, {10: "llama-server", 11: "python"}, {10: 11439})
    nvml = FakeNvml(80 * GIB, [_proc(10, 30 * GIB), _proc(11, 2 * GIB)])
    probe = NvmlProbe(0, nvml=nvml, proc_root=root)
    reading = probe.read()
    assert (reading.total_bytes, reading.used_bytes, reading.free_bytes) == (80 * GIB, 32 * GIB, 48 * GIB)
    assert reading.per_process_available
    by_pid = {p.pid: p for p in reading.processes}
    assert by_pid[10].name == "llama-server" and by_pid[10].listening_ports == (11439,)
    assert by_pid[11].used_bytes == 2 * GIB and by_pid[11].listening_ports == ()
    probe.close()
    assert nvml.calls == ["init", "shutdown"]


def test_nvml_probe_says_when_the_driver_hides_per_process_memory(tmp_path):
    root = _fake_proc_root(tmp_path, {10: "llama-server"}, {})
    probe = NvmlProbe(0, nvml=FakeNvml(80 * GIB, [_proc(10, None)]), proc_root=root)
    reading = probe.read()
    assert not reading.per_process_available and "no per-process memory" in reading.note


def test_nvml_probe_says_when_pids_are_from_another_namespace(tmp_path):
    root = _fake_proc_root(tmp_path, {}, {})
    probe = NvmlProbe(0, nvml=FakeNvml(80 * GIB, [_proc(4242, 5 * GIB)]), proc_root=root)
    reading = probe.read()
    assert not reading.per_process_available and "PID namespace" in reading.note
    assert reading.used_bytes == 5 * GIB


def test_proc_table_finds_this_process_listening_port():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        table = ProcTable()
        assert port in table.listening_ports().get(os.getpid(), set())
        assert table.name(os.getpid())


# ------------------------------------------------------------------ profiles


def test_profiles_persist_and_only_rise_after_the_first_measurement(tmp_path):
    store = ProfileStore()
    key = ProfileKey("ditto", 512, 8)
    assert store.peak_bytes(key, 5 * GIB) == 5 * GIB
    assert store.observe(key, 4 * GIB, 1.0)          # first measurement replaces the guess
    assert not store.observe(key, 3 * GIB, 2.0)      # lower peaks do not lower it
    assert store.observe(key, 6 * GIB, 3.0)
    path = tmp_path / "profiles.json"
    store.save(path)
    loaded = ProfileStore.load(path)
    assert loaded.peak_bytes(key, 0) == 6 * GIB and loaded.get(key).samples == 3
    assert ProfileStore.load(tmp_path / "absent.json").as_dict() == {}


def test_profiles_refuse_an_unknown_format(tmp_path):
    path = tmp_path / "profiles.json"
    path.write_text('{"version": 99, "profiles": []}')
    with pytest.raises(ValueError, match="unknown profile format"):
        ProfileStore.load(path)


# ------------------------------------------------------------------ simulated device


def test_simulated_neighbour_appears_grows_and_vanishes():
    llm = NeighbourScript("llama-server", ((0.0, 10 * GIB), (5.0, 12 * GIB), (9.0, 0)), (11439,))
    device = SimulatedDevice(24 * GIB, [llm])
    device.advance(0.0)
    first = device.read()
    assert first.used_bytes == 10 * GIB and first.processes[0].listening_ports == (11439,)
    device.advance(5.0)
    assert device.read().used_bytes == 12 * GIB
    device.advance(9.0)
    assert device.read().processes == ()


def test_simulated_neighbour_that_cannot_grow_records_one_oom_and_retries():
    llm = NeighbourScript("llama-server", ((0.0, 10 * GIB), (1.0, 30 * GIB)))
    device = SimulatedDevice(24 * GIB, [llm])
    for t in range(4):
        device.advance(float(t))
    assert len(device.neighbour_ooms) == 1


def test_simulated_backend_allocates_reports_and_frees_with_delays():
    device = SimulatedDevice(24 * GIB, [], alloc_delay_s=1.0, free_delay_s=2.0)
    device.advance(0.0)
    device.start_load("ditto", 5 * GIB, load_time_s=10.0)
    device.advance(1.0)
    assert device.read().used_bytes == 5 * GIB and not device.take_reports()
    device.advance(10.0)
    reports = device.take_reports()
    assert reports == [LoadReport("ditto", ok=True, pid=reports[0].pid, peak_bytes=5 * GIB)]
    assert device.ready("ditto")
    device.unload("ditto")
    device.advance(11.0)
    assert device.read().used_bytes == 5 * GIB
    device.advance(12.0)
    assert device.read().used_bytes == 0


def test_simulated_container_hides_per_process_numbers():
    device = SimulatedDevice(24 * GIB, [NeighbourScript("x", ((0.0, GIB),))],
                             per_process_available=False)
    device.advance(0.0)
    reading = device.read()
    assert not reading.per_process_available and reading.processes == ()
    assert reading.used_bytes == GIB
