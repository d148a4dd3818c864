"""benchmarks.train_overhead: the hosts of the plain loop and the host-by-host breakdown."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from benchmarks.train_overhead import (
    PLAIN,
    PLAIN_BESIDE,
    PLAIN_DDP,
    PLAIN_GLIBC_HEAP,
    PLAIN_PER_PARAMETER_ADAM,
    PLAIN_RAY,
    PLAIN_THREAD,
    RAY,
    Measurement,
    Setup,
    bench_params,
    breakdown,
    in_second_thread,
    plain_beside_ray,
    plain_ddp,
    plain_in_ray_worker,
    prepare,
)


def measured(path: str, steady: float, workers: int = 1) -> Measurement:
    return Measurement(path, workers, 2, steady, steady, 1.0)


def test_breakdown_gives_each_host_its_change_against_the_one_before_in_path_order() -> None:
    rows = [measured(RAY, 300.0), measured(PLAIN, 400.0), measured(PLAIN_RAY, 330.0)]
    rows += [measured(PLAIN_THREAD, 380.0), measured(RAY, 999.0, workers=2)]
    rows += [measured(PLAIN_BESIDE, 342.0)]
    text = breakdown(rows)
    thread, beside, inside, stage = text.split(": ", 1)[1].rstrip(".").split("; ")
    assert thread == "running in a second thread -5.0%"
    assert beside == "Ray's processes and an idle Train run beside it -10.0%"
    assert inside == "running inside the Ray Train worker instead -3.5%"
    assert stage.endswith("-9.1%")  # 300 / 330: the 2-worker row is not on the 1-worker path
    assert "switches" not in text


def test_breakdown_gives_each_missing_switch_its_change_against_the_workers_loop() -> None:
    rows = [measured(PLAIN, 400.0), measured(PLAIN_GLIBC_HEAP, 350.0)]
    rows += [measured(PLAIN_PER_PARAMETER_ADAM, 380.0), measured(PLAIN_THREAD, 390.0)]
    text = breakdown(rows)
    assert text.startswith("Host by host (1 worker, steady images/s vs the row before): ")
    assert text.endswith(
        "without one of the workers' switches: glibc's default heap thresholds -12.5%; "
        "per-parameter Adam (torch's CPU default) -5.0%."
    )


def test_breakdown_ends_with_the_two_process_ceiling_and_the_2_worker_stage_against_it() -> None:
    rows = [measured(PLAIN, 400.0), measured(PLAIN_THREAD, 390.0)]
    assert "2 processes" not in breakdown(rows)
    rows += [measured(PLAIN_DDP, 420.0, workers=2), measured(RAY, 378.0, workers=2)]
    assert breakdown(rows).endswith(
        "The loop as 2 processes x 1 thread without Ray (the fastest layout here): 420.0 "
        "images/s, +5.0% vs the main-thread loop; the stage at 2 workers x 1 thread -10.0%."
    )


def test_the_two_process_plain_loop_runs_as_a_ddp_group(tmp_path: Path) -> None:
    """Two fresh processes of one thread each, half the batch each, DDP over gloo, no Ray."""
    setup = Setup(tmp_path, steps=3, batch_size=8, log_every=1, threads=2)
    prepare(bench_params(setup, 1, 1.0, "ray-unused"))
    m = plain_ddp(setup)
    assert (m.path, m.workers, m.threads) == (PLAIN_DDP, 2, 1)
    assert m.steady > 0 and m.session > 0 and not m.steady_is_session


def test_the_second_thread_host_runs_off_the_main_thread_and_surfaces_failure() -> None:
    def where() -> Measurement:
        return measured(threading.current_thread().name, 1.0)

    assert in_second_thread(where).path not in ("MainThread", threading.main_thread().name)

    def fails() -> Measurement:
        raise ValueError("broken loop")

    with pytest.raises(RuntimeError, match="plain loop's thread failed"):
        in_second_thread(fails)


@pytest.mark.slow  # 16 s; the beside-an-idle-run test covers its cluster, trainer and loop
def test_plain_loop_runs_as_a_ray_train_workers_function(tmp_path: Path, local_ray: object) -> None:
    setup = Setup(tmp_path, steps=3, batch_size=8, log_every=1, threads=1)
    prepare(bench_params(setup, 1, 1.0, "ray-unused"))
    m = plain_in_ray_worker(setup, "plain-ray")
    assert m.path == PLAIN_RAY and m.workers == 1 and m.threads == 1
    assert m.steady > 0 and m.session > 0 and not m.steady_is_session


def test_plain_loop_beside_an_idle_train_run_then_stops_it(
    tmp_path: Path, local_ray: object
) -> None:
    setup = Setup(tmp_path, steps=3, batch_size=8, log_every=1, threads=1)
    prepare(bench_params(setup, 1, 1.0, "ray-unused"))
    m = plain_beside_ray(setup, "idle-ray")
    assert m.path == PLAIN_BESIDE and m.steady > 0
    assert (tmp_path / "idle-ray.started").exists() and (tmp_path / "idle-ray.stop").exists()
