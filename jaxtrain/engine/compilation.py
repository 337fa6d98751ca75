"""Compilation: the persistent cache, and naming the cause of a recompilation.

The engine compiles each chunk length once, ahead of time. An AOT executable
does not silently recompile: called with arguments whose shapes, dtypes or
shardings differ from its signature it raises. The engine then warns with the
cause found here (which argument, compiled as what, called as what) and
compiles again, so a recompilation is never silent and never fatal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jaxtrain.util.files import user_cache_dir

_cache_dir: str | None = None


def default_cache_dir() -> Path:
    return user_cache_dir() / "xla"


def enable_persistent_cache(setting: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in `setting` ('auto' = the user cache dir).

    A second run of the same config then loads its executables instead of compiling
    them. None/'off' leaves JAX's setting alone. Returns the directory in use.
    """
    global _cache_dir
    if setting in (None, "off", "none", ""):
        return None
    path = str(default_cache_dir() if setting == "auto" else Path(setting).expanduser())
    if _cache_dir == path:
        return path
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache must never stop training
    jax.config.update("jax_compilation_cache_dir", path)
    # The MLP's steps compile in well under JAX's default 1 s threshold; cache them anyway.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _cache_dir = path
    return path


def signature_mismatch(compiled, args: tuple) -> str:
    """Name the arguments whose shape/dtype/sharding differ from `compiled`'s signature."""
    expected_avals = jax.tree.leaves(compiled.in_avals[0])
    expected_shardings = jax.tree.leaves(compiled.input_shardings[0])
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(args)[0]
    if len(paths_and_leaves) != len(expected_avals):
        return (f"the arguments' structure changed: {len(paths_and_leaves)} arrays, "
                f"compiled with {len(expected_avals)}")
    diffs = []
    for (path, leaf), aval, sharding in zip(paths_and_leaves, expected_avals, expected_shardings):
        got = jax.typeof(leaf)
        first = getattr(path[0], "idx", None)
        where = ("state" if first == 0 else f"argument {first}") + jax.tree_util.keystr(path[1:])
        if (got.shape, got.dtype) != (aval.shape, aval.dtype):
            diffs.append(f"{where}: compiled as {aval.str_short()}, called with {got.str_short()}")
        elif hasattr(leaf, "sharding") and not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            diffs.append(f"{where}: compiled with sharding {sharding}, called with {leaf.sharding}")
    return "; ".join(diffs[:3]) + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "") \
        if diffs else "an argument differs from the compiled signature"


# ---------------------------------------------------------------- counting one step's FLOPs


def abstract(tree: Any) -> Any:
    """The shapes, dtypes and shardings of `tree`'s arrays: what lowering a call needs, not the
    data (kept so one step's program can be compiled after the arrays were donated)."""
    def spec(leaf):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))
    return jax.tree.map(spec, tree)


def one_step_program(runner, state: Any, args: tuple, on_device: bool) -> Any:
    """The training call compiled for exactly one step, from abstract `state` and `args` of a
    K-step call (device runner: `num_steps=1`; stream runner: the stacked batches cut to one).

    Its cost analysis is one step's FLOPs, whatever K. A K-step call's analysis is not: XLA
    counts a loop's body once, and the body holds as many steps as the scan is unrolled
    (`lax.scan(unroll=u)`, or XLA's own unrolling), all K of them when fully unrolled; taken
    as one step, that count made a run 'achieve' several times the CPU's peak (issue 28)."""
    if on_device:
        return runner.lower(state, *args, num_steps=1).compile()
    first = jax.tree.map(lambda s: jax.ShapeDtypeStruct((1, *s.shape[1:]), s.dtype, sharding=s.sharding)
                         if isinstance(s, jax.ShapeDtypeStruct) else s, args)
    return runner.lower(state, *first).compile()
