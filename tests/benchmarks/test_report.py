"""benchmarks.report.OtherCpus: CPU used by processes outside the benchmark's tree, not its own."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.report import OtherCpus, busy_seconds

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def test_an_outside_process_counts_and_an_own_child_does_not() -> None:
    # An orphan (its parent shell exits at once, so it is no descendant of this process).
    subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '{SPIN.format(s=2.5)}' >/dev/null 2>&1 &"], check=True
    )
    with OtherCpus(every=0.2) as outside:
        time.sleep(2.0)
    assert outside.cpus > 0.3  # the orphan spun most of the block on one of the CPUs

    busy = busy_seconds()
    start = time.perf_counter()
    with OtherCpus(every=0.2) as own:
        subprocess.run([sys.executable, "-c", SPIN.format(s=2.0)], check=True)
    total = (busy_seconds() - busy) / (time.perf_counter() - start)  # every process's CPUs
    assert own.cpus < total - 0.3  # the child's ~1 CPU is its own, not other
