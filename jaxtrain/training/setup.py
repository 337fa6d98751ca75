"""Everything before the first step: mesh, optimizer, the pure step, the executor and the
engine, the state.

`setup` builds one run of a plan made by its caller (runs/lanes.py makes it once). With
`points` it builds one run for several points that differ only in optimizer
hyperparameters (`optim.VECTOR_FIELDS`): those live in the optimizer state, the points'
states are stacked, and the engine runs the step under `jax.vmap`, so every point sees
the same batches in one compiled program. Either way the same `Run` goes to the same
loop (loop.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.config.schema import Config
from jaxtrain.data import Dataset
from jaxtrain.parallel import placement
from jaxtrain.engine.engine import Engine
from jaxtrain.engine.timeline import Timeline
from jaxtrain.engine.executors import Executor, make_executor
from jaxtrain.engine.plan import RunPlan
from jaxtrain.engine.step import init_state, make_train_step, split_model
from jaxtrain.model.augment import make_augment
from jaxtrain.model.optim import VECTOR_FIELDS, build_optimizer
from jaxtrain.training.evaluator import Evaluator
from jaxtrain.training.run import Lane, Run
from jaxtrain.training.context import RunContext

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _train_step(cfg: Config, dataset: Dataset, graphdef, tx, executor: Executor):
    return make_train_step(graphdef, tx, dataset.task, l1=cfg.optimizer.l1, l2=cfg.optimizer.l2,
                           skip_nonfinite=cfg.train.on_nonfinite == "skip_step",
                           axis_name=executor.step_axis, grad_accum_steps=cfg.train.grad_accum_steps,
                           ema_decay=cfg.train.ema_decay,
                           augment=make_augment(cfg.train.augment, dataset.feature_shape, cfg.train.seed,
                                                dataset.image_shape))


def _engine(cfg: Config, dataset: Dataset, executor: Executor, train_step, ctx: RunContext,
            plan: RunPlan) -> Engine:
    return Engine(train_step, dataset, executor, plan, seed=cfg.train.seed,
                  timeline=Timeline(ctx.clock, ctx.watchdog), sync_each_call=cfg.train.profile)


def _mesh(cfg: Config, plan: RunPlan) -> tuple[Any, placement.Layout]:
    mesh = placement.make_mesh(cfg.parallel)
    placement.check_batch_size(plan.batch_size, mesh)
    placement.check_microbatches(plan.microbatches, plan.batch_size, mesh)
    return mesh, placement.Layout(cfg.parallel.strategy, mesh)


def setup(cfg: Config, model: nnx.Module, dataset: Dataset, ctx: RunContext, *, plan: RunPlan,
          hyperparams_in_state: Sequence[str] | None = None, points: Sequence[Lane] | None = None) -> Run:
    """A run of `plan`. Plain: one lane of `cfg` and `ctx`. With `points` (lanes whose configs
    differ only in VECTOR_FIELDS; `cfg` and `ctx` are the first's): their states stacked, a
    vmapped step, one lane each. `hyperparams_in_state`: the fields kept in the optimizer state
    (a resumed vectorized point's; for points, default those they differ in: a population
    rebuilt from some of its points passes the original ones, so its state fits)."""
    mesh, layout = _mesh(cfg, plan)
    train_def, eval_def, params, rest = split_model(model)
    lanes = list(points) if points else [Lane(cfg, ctx)]
    if hyperparams_in_state is None:
        hyperparams_in_state = varying_fields([lane.cfg for lane in lanes]) if points else ()
    in_state = tuple(hyperparams_in_state)
    txs = [build_optimizer(lane.cfg.optimizer, plan.steps_per_epoch, plan.epochs, params, in_state=in_state)
           for lane in lanes]
    state = layout.place_state(_initial_state(cfg, params, rest, txs, stacked=bool(points)))
    executor = make_executor(layout, dataset.task, plan.batch_size, points=len(lanes) if points else None)
    # Any point's transformation serves all: the hyperparameters are read from the state.
    engine = _engine(cfg, dataset, executor, _train_step(cfg, dataset, train_def, txs[0], executor), ctx, plan)
    evaluator = Evaluator(eval_def, mesh, plan.eval_batch_size, dataset)
    for i, lane in enumerate(lanes):
        lane.index, lane.hyperparams_in_state = (i if points else None), in_state
    return Run(cfg=cfg, plan=plan, dataset=dataset, mesh=mesh, engine=engine, evaluator=evaluator, state=state,
               lanes=lanes)


def _initial_state(cfg: Config, params, rest, txs: list, stacked: bool):
    """The initial state of each optimizer in `txs` (stacked along a new leading axis for points)."""
    if not stacked:
        # One compiled call (cached across runs) instead of an eager compile per optimizer-state leaf.
        ema = cfg.train.ema_decay is not None
        return jax.jit(lambda p, r: init_state(p, r, txs[0], ema=ema))(params, rest)
    states = [init_state(params, rest, tx) for tx in txs]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def varying_fields(cfgs: Sequence[Config]) -> tuple[str, ...]:
    """The optimizer hyperparameters in which the points differ."""
    return tuple(f for f in VECTOR_FIELDS if len({getattr(c.optimizer, f) for c in cfgs}) > 1)
