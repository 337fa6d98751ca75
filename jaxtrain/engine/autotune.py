"""`train.steps_per_call: auto`: pick K, the steps fused into one compiled call.

More steps per call amortize the per-call cost (Python, dispatch, the loop's
bookkeeping) over more steps, but each distinct chunk length costs a compile,
and a long chunk makes hooks, progress and checkpoints coarser. So candidates
are tried from small to large and a larger K is only taken when it is clearly
faster (by `min_gain`, 3%) than the best so far; the search stops at the first one
that is not. Candidates are moved to a divisor of the epoch's step count when
one is near, so that the epoch splits into equal chunks and needs one compile.

The measurement itself lives in the engine (it runs throwaway calls on a copy of
the training state); this module only decides, so the rule is testable with a
fake measurement.
"""

from __future__ import annotations

from typing import Callable

TARGETS = (1, 8, 32)
# Beyond this many steps per epoch the whole epoch is not a candidate (measuring it would
# cost a whole epoch of throwaway steps); ~512 steps per call amortize any per-call cost.
MAX_CANDIDATE = 1024


def near_divisor(steps: int, k: int) -> int:
    """The divisor of `steps` in [k/2, 2k] closest to k, else k (at most `steps`)."""
    divisors = [d for d in range(max(1, k // 2), min(steps, 2 * k) + 1) if steps % d == 0]
    if divisors:
        return min(divisors, key=lambda d: (abs(d - k), -d))
    return min(k, steps)


def divisor_at_most(multiple: int, k: int) -> int:
    """The largest divisor of `multiple` that is at most k: a K whose call boundaries
    fall on every multiple-th step (checkpoint.every_steps saves between calls)."""
    return max(d for d in range(1, min(k, multiple) + 1) if multiple % d == 0)


def candidates(steps: int, max_k: int | None = None, step_multiple: int | None = None) -> list[int]:
    """Candidate K values for an epoch of `steps` steps, ascending, bounded by `max_k`,
    each dividing `step_multiple` when one is given."""
    limit = min(steps, max_k) if max_k else steps
    if limit > MAX_CANDIDATE:
        limit = near_divisor(steps, MAX_CANDIDATE // 2)
    ks = {min(near_divisor(steps, k), limit) for k in TARGETS} | {limit}
    if step_multiple:
        ks = {divisor_at_most(step_multiple, k) for k in ks}
    return sorted(ks)


def choose(measure: Callable[[int], float], ks: list[int], min_gain: float = 0.03,
           early_stop: bool = True) -> tuple[int, dict[int, float]]:
    """Return (chosen K, seconds per step measured for each tried K).

    `early_stop=False` measures every candidate: processes of a multi-process run must
    all run the same calls (they contain collectives), whatever their own timings say.
    """
    timings: dict[int, float] = {}
    best = None
    stopped = False
    for k in ks:
        timings[k] = measure(k)
        if not stopped and (best is None or timings[k] < timings[best] * (1 - min_gain)):
            best = k
        else:
            stopped = True  # not clearly faster: a longer chunk would not pay for its compile
            if early_stop:
                break
    return best, timings
