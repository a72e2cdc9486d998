"""CPU accounting for the scale benchmark: a process tree sampled while it runs, and the machine.

`TreeCpu` samples, every `interval` seconds, every process in the given process groups (the
webserver and the daemon run in their own sessions, and everything they start, code servers
and run workers, inherits the group). A process's CPU is its last sampled user+system time,
so a process that exits loses at most its last `interval` of CPU: the figure is a slight
underestimate. `MachineCpu` reads /proc/stat: busy CPU of the whole machine (other work and
PostgreSQL included), to show the load the figures were measured under.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

Key = tuple[int, float]  # pid, create_time: pids are reused


class TreeCpu:
    def __init__(self, groups: list[int], interval: float = 0.25) -> None:
        self.groups = set(groups)
        self.interval = interval
        self.cpu: dict[Key, float] = {}
        self.names: dict[Key, str] = {}
        self.peak_procs = 0
        self._procs: dict[Key, psutil.Process] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeCpu:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        alive = 0
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) not in self.groups:
                    continue
                proc = psutil.Process(pid)
                key = (pid, proc.create_time())
                times = proc.cpu_times()
                with self._lock:
                    if key not in self.names:
                        self.names[key] = " ".join(proc.cmdline()[:3])[-80:]
                    self.cpu[key] = times.user + times.system
                alive += 1
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        self.peak_procs = max(self.peak_procs, alive)

    def snapshot(self) -> dict[Key, float]:
        self.sample()
        with self._lock:
            return dict(self.cpu)

    def since(self, before: dict[Key, float]) -> float:
        """CPU seconds used by the groups since `before` (a snapshot), new processes included."""
        now = self.snapshot()
        return sum(cpu - before.get(key, 0.0) for key, cpu in now.items())


@dataclass
class MachineCpu:
    busy: float
    total: float
    at: float

    @classmethod
    def now(cls) -> MachineCpu:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]  # idle + iowait
        return cls(busy=(sum(fields[:8]) - idle) / hz, total=sum(fields[:8]) / hz, at=time.time())

    def since(self, before: MachineCpu) -> tuple[float, float]:
        """(busy CPU seconds of the whole machine, busy share of all cores) since `before`."""
        busy = self.busy - before.busy
        total = self.total - before.total
        return busy, (busy / total if total else 0.0)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
