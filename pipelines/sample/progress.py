"""The sample stage's progress from its first step: denoising steps done, throughput and ETA.

Each `SamplerActor` reports, every few reverse steps, how many image-steps (images x steps) of its
shard are done to one `StepBoard` actor (fire and forget: the sampling loop never waits on it); a
driver thread reads the board every `every_s` seconds and logs one line. Shards kept from an
earlier run count as done but not as throughput.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import ray

from pipelines.infra.progress import format_duration

log = logging.getLogger(__name__)


class StepBoard:
    """Image-steps done per shard: {shard index: (done, new)} (a Ray actor, `board()`)."""

    def __init__(self) -> None:
        self.steps: dict[int, tuple[int, bool]] = {}

    def report(self, shard: int, image_steps: int, new: bool) -> None:
        self.steps[shard] = (image_steps, new)

    def totals(self) -> tuple[int, int]:
        """(image-steps done, of which sampled by this run)."""
        done = sum(n for n, _ in self.steps.values())
        return done, sum(n for n, new in self.steps.values() if new)


def board() -> ray.actor.ActorHandle:
    """A new board on the cluster; it takes no CPU, so it never blocks a sampling actor."""
    return ray.remote(num_cpus=0)(StepBoard).remote()


@dataclass(frozen=True)
class Reporter:
    """The actor's side: `on_step(k)` for one shard of `count` images, every `every` steps."""

    handle: ray.actor.ActorHandle
    shard: int
    count: int
    steps: int  # reverse steps of the sampler (T, or T / stride)
    every: int

    def on_step(self, k: int) -> None:
        if k % self.every == 0 or k == self.steps:
            self.handle.report.remote(self.shard, k * self.count, True)

    def skipped(self) -> None:
        self.handle.report.remote(self.shard, self.steps * self.count, False)


def progress_line(done: int, new: int, total: int, steps: int, elapsed: float) -> str:
    """'sample: denoising 42% (...)  3.20 images/s  ETA 1m05s' from image-step counts."""
    rate = new / max(elapsed, 1e-9)  # image-steps per second of this run
    eta = (total - done) / rate if rate > 0 else float("nan")
    return (
        f"sample: denoising {100 * done / max(total, 1):.0f}% of {total // steps} images x "
        f"{steps} steps  {rate / steps:.2f} images/s  ETA {format_duration(eta)}"
    )


class Watcher:
    """A driver thread that logs `progress_line` every `every_s` seconds until stopped."""

    def __init__(
        self, handle: ray.actor.ActorHandle, total: int, steps: int, every_s: float
    ) -> None:
        self.handle, self.total, self.steps, self.every_s = handle, total, steps, every_s
        self.stop_event = threading.Event()
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="sample-progress", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            try:
                done, new = ray.get(self.handle.totals.remote(), timeout=max(self.every_s, 5.0))
            except Exception as e:  # a slow or lost board: progress is best effort
                log.debug("sample: progress board unavailable: %s", e)
                continue
            if done:
                elapsed = time.perf_counter() - self.start
                log.info(progress_line(done, new, self.total, self.steps, elapsed))
