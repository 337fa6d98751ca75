"""Everything before the first step: mesh, optimizer, the pure step, the executor and the
engine, the state.

`setup` builds a plain run; `setup_vectorized` builds one run for several points that
differ only in optimizer hyperparameters (`optim.VECTOR_FIELDS`): those live in the
optimizer state, the points' states are stacked, and the engine runs the step under
`jax.vmap`, so every point sees the same batches in one compiled program. Both hand
the same `Run` to the same loop (loop.py).
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
from jaxtrain.engine.executors import Executor, make_executor
from jaxtrain.engine.plan import RunPlan, make_plan
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
    return Engine(train_step, dataset, executor, plan, seed=cfg.train.seed, watchdog=ctx.watchdog)


def _mesh(cfg: Config, plan: RunPlan) -> tuple[Any, placement.Layout]:
    mesh = placement.make_mesh(cfg.parallel)
    placement.check_batch_size(plan.batch_size, mesh)
    placement.check_microbatches(plan.microbatches, plan.batch_size, mesh)
    return mesh, placement.Layout(cfg.parallel.strategy, mesh)


def setup(cfg: Config, model: nnx.Module, dataset: Dataset, ctx: RunContext,
          hyperparams_in_state: Sequence[str] = (), plan: RunPlan | None = None) -> Run:
    """A plain run of `plan` (made here when not given). `hyperparams_in_state`: a vectorized
    point's optimizer, to resume it."""
    plan = plan or make_plan(cfg, dataset)
    mesh, layout = _mesh(cfg, plan)
    train_def, eval_def, params, rest = split_model(model)
    tx = build_optimizer(cfg.optimizer, plan.steps_per_epoch, plan.epochs, params,
                         in_state=tuple(hyperparams_in_state))
    # One compiled call (cached across runs) instead of an eager compile per optimizer-state leaf.
    ema = cfg.train.ema_decay is not None
    state = layout.place_state(jax.jit(lambda p, r: init_state(p, r, tx, ema=ema))(params, rest))
    executor = make_executor(layout, dataset.task, plan.batch_size)
    engine = _engine(cfg, dataset, executor, _train_step(cfg, dataset, train_def, tx, executor), ctx, plan)
    evaluator = Evaluator(eval_def, mesh, plan.eval_batch_size, dataset)
    return Run(cfg=cfg, plan=plan, dataset=dataset, mesh=mesh, engine=engine, evaluator=evaluator, state=state,
               lanes=[Lane(cfg, ctx, hyperparams_in_state=tuple(hyperparams_in_state))])


def varying_fields(cfgs: Sequence[Config]) -> tuple[str, ...]:
    """The optimizer hyperparameters in which the points differ."""
    return tuple(f for f in VECTOR_FIELDS if len({getattr(c.optimizer, f) for c in cfgs}) > 1)


def setup_vectorized(cfgs: Sequence[Config], model: nnx.Module, dataset: Dataset,
                     ctxs: Sequence[RunContext], names: Sequence[str], plan: RunPlan | None = None,
                     varying: tuple[str, ...] | None = None) -> Run:
    """One run for points that differ only in VECTOR_FIELDS: stacked states, a vmapped step.
    `varying`: the fields kept in the optimizer state (default: those the points differ in); a
    population rebuilt from some of its points keeps the original ones, so its state fits."""
    base = cfgs[0]
    plan = plan or make_plan(base, dataset, points=len(cfgs))
    mesh, layout = _mesh(base, plan)
    train_def, eval_def, params, rest = split_model(model)
    varying = varying_fields(cfgs) if varying is None else varying
    txs = [build_optimizer(c.optimizer, plan.steps_per_epoch, plan.epochs, params, in_state=varying)
           for c in cfgs]
    states = [init_state(params, rest, tx) for tx in txs]
    state = layout.place_state(jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))
    executor = make_executor(layout, dataset.task, plan.batch_size, points=len(cfgs))
    # Any point's transformation serves all: the hyperparameters are read from the state.
    train_step = _train_step(base, dataset, train_def, txs[0], executor)
    engine = _engine(base, dataset, executor, train_step, ctxs[0], plan)
    evaluator = Evaluator(eval_def, mesh, plan.eval_batch_size, dataset)
    lanes = [Lane(cfg, ctx, index=i, name=name, hyperparams_in_state=varying)
             for i, (cfg, ctx, name) in enumerate(zip(cfgs, ctxs, names))]
    return Run(cfg=base, plan=plan, dataset=dataset, mesh=mesh, engine=engine, evaluator=evaluator, state=state,
               lanes=lanes)
