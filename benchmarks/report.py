"""Shared by the benchmarks: the load average, the CPU other processes took during a measured
block, and the results writer."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

import psutil

from pipelines.infra.files import write_text

# Other processes' CPUs above which a turn is "under load": a tenth of one CPU taken from a
# 2-CPU machine's budget already moves a throughput ratio by a few percent.
OTHER_CPUS_LIMIT = 0.1


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. '0.4 0.8 1.2' (CPUs shared with other jobs)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_result(path: Path, text: str) -> None:
    """Write a results table atomically (`pipelines.infra.files`)."""
    write_text(path, text)


class OtherCpus:
    """CPUs used by processes outside this one's tree while the `with` block runs.

    The load average counts the benchmark's own processes (its Ray cluster, actors, threads),
    so it cannot tell a quiet machine from a busy one. This samples, every `every` s, the
    machine's busy CPU time (/proc/stat) and this process tree's own CPU time (psutil), and
    keeps the difference: `cpus` is the average number of CPUs the rest of the machine used.
    An own process that ends between two samples counts its last interval as other (an
    overestimate, on the safe side of the verdict).
    """

    def __init__(self, every: float = 1.0) -> None:
        self.every, self.cpus = every, 0.0
        self._stop = threading.Event()
        self._own: dict[tuple[int, float], float] = {}
        self._other_s = 0.0

    def __enter__(self) -> OtherCpus:
        self._start = time.perf_counter()
        self._busy, self._own_s = busy_seconds(), self._own_seconds()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpus = self._other_s / max(time.perf_counter() - self._start, 1e-9)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        busy, own = busy_seconds(), self._own_seconds()
        self._other_s += max(0.0, (busy - self._busy) - (own - self._own_s))
        self._busy, self._own_s = busy, own

    def _own_seconds(self) -> float:
        """CPU s of this process and its live descendants, each counted from when first seen
        (a process born between samples counts its whole life)."""
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                self._own[(proc.pid, proc.create_time())] = t.user + t.system
            except psutil.Error:  # ended while listed
                continue
        return sum(self._own.values())


def busy_seconds() -> float:
    """All CPUs' non-idle time since boot (s), from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's model name and whether it has AMX bf16 tiles (what bf16 autocast runs on)."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's
    amx = "amx_bf16" in fields.get("flags", "").split()
    return f"{fields.get('model name', 'unknown CPU')}, {'with' if amx else 'no'} AMX-BF16"
