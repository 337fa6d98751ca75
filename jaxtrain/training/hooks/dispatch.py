"""The one way hooks are called: stage by stage (protocol.STAGES; in the order given within a
stage), each one's time charged to its part of the run's clock (a hook's `time_part`, else
Phase.HOOKS; training/accounting.py). This is the loop's hand on the clock for hook time, kept
beside the hooks because only a hook says which phase it is."""

from __future__ import annotations

from typing import Callable, Sequence

from jaxtrain.training.accounting import hook_part
from jaxtrain.training.hooks.protocol import STAGES, Hook
from jaxtrain.util.clock import RunClock


def dispatch(clock: RunClock, hook_lists: Sequence[Sequence[Hook]],
             call: Callable[[int, Hook], None]) -> None:
    """`call(list_index, hook)` for every hook of every list. With several lists (the lanes of
    a vectorized run), each position runs for every list before the next position: the lanes'
    hooks act in step (preemption, last, acts after every point's final checkpoint)."""
    hook_lists = [in_stages(hooks) for hooks in hook_lists]
    for rank in range(max((len(hooks) for hooks in hook_lists), default=0)):
        for index, hooks in enumerate(hook_lists):
            if rank < len(hooks):
                with clock.phase(hook_part(hooks[rank])):
                    call(index, hooks[rank])


def in_stages(hooks: Sequence[Hook]) -> list[Hook]:
    """`hooks` in the order of their stages; a stable sort: within a stage, as given."""
    return sorted(hooks, key=lambda hook: STAGES.index(hook.stage))


def close_all(clock: RunClock, hooks: Sequence[Hook]) -> None:
    """`close()` on every hook (however training ended)."""
    dispatch(clock, [hooks], lambda _, hook: hook.close())
