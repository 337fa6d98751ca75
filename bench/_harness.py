"""Shared timing harness for the benchmarks in `bench/`.

A benchmark is a list of *peers*: small objects with the shape

    name: str                     # short id, used as a key in results
    label: str                    # human-readable description
    items_per_run: int            # examples processed by one `run_epoch()` call
    setup() -> None               # build model, data, compile; raise Skip(reason) to opt out
    run_epoch() -> float | None   # do one unit of timed work (one epoch, or E epochs)
    sync() -> None                # wait until the work of run_epoch() has really finished

`run_epoch()` normally returns None and is timed by the harness (wall clock around
`run_epoch(); sync()`).  A peer that can only measure itself (e.g. a whole trainer
run that reports its own steady-state rate with compilation excluded) returns its
measured items/s instead; the harness then records that number as the sample.

Measurement rules (the same for every peer, so ratios are fair):

- every peer is set up first, then warmed up (`warmup` untimed runs each), so no
  sample includes compilation, allocator growth or lazy imports;
- timed repeats are *interleaved*: repeat r runs every peer once, round-robin,
  starting at a different peer each repeat (rotation), so slow drifts of the
  machine (thermal, other load) spread over all peers instead of hitting one;
- the reported figure is the *median* of the samples (robust to one noisy
  repeat); min, max and all samples are kept for the record;
- a peer that fails in setup or while running is reported as skipped/failed with
  its reason and leaves the others untouched.

`bench/throughput.py` and `bench/compare.py` both use `measure()`; `time_call()`
is there for single functions (e.g. a jitted step) that are not worth a class.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Protocol, Sequence


class Skip(Exception):
    """Raised by a peer's setup() when it cannot run here (missing package, ...)."""


class Peer(Protocol):
    name: str
    label: str
    items_per_run: int

    def setup(self) -> None: ...
    def run_epoch(self) -> float | None: ...
    def sync(self) -> None: ...


@dataclasses.dataclass
class Result:
    name: str
    label: str
    status: str = "pending"            # ok | skipped | failed
    reason: str = ""
    samples: list[float] = dataclasses.field(default_factory=list)   # items/s per timed repeat
    seconds: list[float] = dataclasses.field(default_factory=list)   # wall s per timed repeat
    setup_s: float = 0.0               # setup() wall time
    warmup_s: list[float] = dataclasses.field(default_factory=list)  # wall s per warm-up run
    self_timed: bool = False           # samples were reported by the peer, not timed here
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["median"] = self.median
        d["min"] = min(self.samples) if self.samples else None
        d["max"] = max(self.samples) if self.samples else None
        d["repeats"] = len(self.samples)
        return d


class EngineEpochs:
    """A peer that trains through jaxtrain's engine (`self.run`, a set-up training run):
    one epoch per unit of work, waited for on the state."""
    epoch = 0

    def run_epoch(self) -> None:
        for self.run.state, _, _ in self.run.engine.run_epoch(self.run.state, self.epoch):
            pass
        self.epoch += 1

    def sync(self) -> None:
        import jax
        jax.block_until_ready(self.run.state)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _one_run(peer: Peer) -> tuple[float, float | None]:
    """Run one unit of work; return (wall seconds, self-reported items/s or None)."""
    t0 = time.perf_counter()
    reported = peer.run_epoch()
    peer.sync()
    return time.perf_counter() - t0, reported


def round_robin(n_peers: int, repeat: int) -> list[int]:
    """Peer order for `repeat`: 0..n-1 rotated by `repeat` (each peer leads in turn)."""
    return [(repeat + i) % n_peers for i in range(n_peers)]


def measure(peers: Sequence[Peer], repeats: int = 5, warmup: int = 1,
            log: Callable[[str], None] = _log) -> list[Result]:
    """Set up, warm up and time `peers` with interleaved repeats; see the module doc."""
    results = [Result(p.name, p.label) for p in peers]

    def fail(i: int, stage: str, exc: BaseException) -> None:
        r = results[i]
        missing = stage == "setup" and isinstance(exc, (ImportError, AttributeError))
        r.status = "skipped" if isinstance(exc, Skip) or missing else "failed"
        r.reason = f"{stage}: {type(exc).__name__}: {exc}"
        log(f"  {peers[i].name}: {r.status} ({r.reason})")
        if r.status == "failed":
            log(traceback.format_exc())

    live = []
    for i, p in enumerate(peers):
        log(f"setup   {p.name}")
        t0 = time.perf_counter()
        try:
            p.setup()
        except Exception as exc:        # noqa: BLE001 - one peer must not sink the others
            fail(i, "setup", exc)
            continue
        results[i].setup_s = time.perf_counter() - t0
        live.append(i)

    for i in list(live):
        try:
            for _ in range(warmup):
                dt, _ = _one_run(peers[i])
                results[i].warmup_s.append(dt)
            log(f"warm-up {peers[i].name}: {', '.join(f'{s:.2f}s' for s in results[i].warmup_s)}")
        except Exception as exc:        # noqa: BLE001
            fail(i, "warm-up", exc)
            live.remove(i)

    for rep in range(repeats):
        order = [live[j] for j in round_robin(len(live), rep)] if live else []
        for i in order:
            if results[i].status == "failed":
                continue
            p, r = peers[i], results[i]
            try:
                dt, reported = _one_run(p)
            except Exception as exc:    # noqa: BLE001
                fail(i, f"repeat {rep}", exc)
                continue
            r.seconds.append(dt)
            if reported is not None:
                r.self_timed = True
                r.samples.append(float(reported))
            else:
                r.samples.append(p.items_per_run / dt)
            log(f"repeat {rep + 1}/{repeats} {p.name:>14}: {r.samples[-1]:>10,.0f} items/s"
                f" ({dt:.2f}s wall)")

    for i in live:
        if results[i].status == "pending":
            results[i].status = "ok" if results[i].samples else "failed"
    return results


def time_call(fn: Callable[[], Any], items: int, repeats: int = 5, warmup: int = 1,
              sync: Callable[[Any], Any] | None = None) -> Result:
    """Median items/s of `fn()` (its result passed to `sync`, e.g. jax.block_until_ready)."""

    class _Fn:
        name = label = getattr(fn, "__name__", "fn")
        items_per_run = items
        _out: Any = None

        def setup(self) -> None:
            pass

        def run_epoch(self) -> None:
            self._out = fn()

        def sync(self) -> None:
            if sync is not None:
                sync(self._out)

    return measure([_Fn()], repeats=repeats, warmup=warmup, log=lambda _: None)[0]
