"""Vectorized sweeps: points that differ only in optimizer hyperparameters train together.

The optimizer is wrapped in `optax.inject_hyperparams`, so the learning rate (and
weight decay, momentum) live in the optimizer *state* instead of being baked into
the compiled step. The states of all P points are stacked along a new leading
axis and one compiled program runs a whole epoch for all of them:
`jax.vmap(epoch_runner)` over the stacked state, with the data, the permutation
and therefore every batch shared by all points. Each point starts from the same
initial parameters and sees the same batches as its separate run, so the results
agree with separate runs to float32 rounding (tested to 1e-5).

Every point still gets a complete run directory (config.yaml, stats.json,
metrics.jsonl, summary.json, checkpoints/), written per point from the stacked state.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxtrain import data as data_stage
from jaxtrain.dist import parallel
from jaxtrain.config.schema import Config, dump_yaml, to_dict
from jaxtrain.engine.engine import padded_order, steps_per_epoch
from jaxtrain.util.events import Console, JsonlWriter, format_metrics
from jaxtrain.model.optim import build_optimizer
from jaxtrain.engine.step import init_state, make_device_epoch_runner, make_train_step, split_model
from jaxtrain.util.workdir import WorkdirLock

# Optimizer fields a vectorized group may differ in (each is a number the optimizer reads).
VECTOR_FIELDS = ("learning_rate", "weight_decay", "momentum")


def _can_vectorize(cfg: Config) -> bool:
    """Vectorized training covers the plain fit: in-memory data, no per-run hooks."""
    return (cfg.data.backend == "numpy" and not cfg.data.streaming
            and cfg.parallel.strategy == "sharded" and cfg.train.early_stopping is None
            and not cfg.train.augment and cfg.model.init_from is None
            and cfg.train.grad_accum_steps == 1 and cfg.train.ema_decay is None)


def vector_groups(cfgs: list[Config]) -> list[list[int]]:
    """Indices of points grouped by everything except the optimizer's VECTOR_FIELDS
    (points that cannot be vectorized run alone)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if not _can_vectorize(cfg):
            groups[f"alone-{i}"] = [i]
            continue
        d = to_dict(cfg)
        for f in VECTOR_FIELDS:
            d["optimizer"].pop(f)
        groups.setdefault(json.dumps(d, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _index(tree, i: int):
    return jax.tree.map(lambda a: a[i], tree)


def injectable_optimizer(cfg: Config, varying: list[str], steps: int, params, values: dict):
    """`build_optimizer` with the `varying` fields as optimizer state (optax.inject_hyperparams)."""
    base = cfg.optimizer

    def factory(learning_rate, weight_decay, momentum):
        opt = dataclasses.replace(base, learning_rate=learning_rate, weight_decay=weight_decay,
                                  momentum=momentum)
        return build_optimizer(opt, steps, cfg.train.epochs, params)

    static = [f for f in VECTOR_FIELDS if f not in varying]
    return optax.inject_hyperparams(factory, static_args=static)(
        **{f: values.get(f, getattr(base, f)) for f in VECTOR_FIELDS})


def train_vectorized(cfgs: list[Config], workdirs: list[Path], console: Console | None = None) -> list[dict]:
    """Train points that differ only in VECTOR_FIELDS in one program; return their summaries."""
    from jaxtrain.runs.api import make_model, prepare_workdir, write_json
    from jaxtrain.ckpt.checkpoint import Checkpointer
    from jaxtrain.training.loop import Evaluator

    t_start = time.perf_counter()
    console = console or Console("none")
    base = cfgs[0]
    dirs = [prepare_workdir(w) for w in workdirs]
    locks = [WorkdirLock(d).acquire() for d in dirs]  # as train() holds one: a second run is refused
    events = []
    try:
        for cfg, d in zip(cfgs, dirs):
            (d / "config.yaml").write_text(dump_yaml(cfg))
        events = [JsonlWriter(d / "metrics.jsonl") for d in dirs]
        t0 = time.perf_counter()
        dataset = data_stage.load_dataset(base.data)
        data_s = time.perf_counter() - t0
        for d in dirs:
            data_stage.write_artifacts(dataset, d)   # stats.json + preprocess_report.json
        model = make_model(base, dataset)
        mesh = parallel.make_mesh(base.parallel)
        parallel.check_batch_size(base.data.batch_size, mesh)
        train_def, eval_def, params, rest = split_model(model)
        n_train, bs = len(dataset.train), base.data.batch_size
        steps = steps_per_epoch(n_train, bs)
        varying = [f for f in VECTOR_FIELDS if len({getattr(c.optimizer, f) for c in cfgs}) > 1]
        txs = [injectable_optimizer(c, varying, steps, params,
                                    {f: getattr(c.optimizer, f) for f in varying}) for c in cfgs]
        repl = parallel.replicated(mesh)
        states = jax.device_put(_stack([init_state(params, rest, tx) for tx in txs]), repl)
        # Any point's transformation serves all: the hyperparameters are read from the state.
        train_step = make_train_step(train_def, txs[0], dataset.task, l1=base.optimizer.l1,
                                     l2=base.optimizer.l2,
                                     skip_nonfinite=base.train.on_nonfinite == "skip_step")
        batch_shard = parallel.batch_sharding(mesh)

        def constrain(batch):
            return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_shard), batch)

        runner = make_device_epoch_runner(train_step, dataset.task, bs, constrain)

        def epoch(stacked, x_all, y_all, order):
            return jax.vmap(lambda s: runner(s, x_all, y_all, order, 0, steps))(stacked)

        x_all, y_all = jax.device_put((dataset.train.x, dataset.train.y), repl)
        order0 = jax.device_put(padded_order(n_train, base.train.seed, 0, steps * bs), repl)
        t0 = time.perf_counter()
        compiled = jax.jit(epoch, donate_argnums=0).lower(states, x_all, y_all, order0).compile()
        compile_s = time.perf_counter() - t0
        evaluator = Evaluator(eval_def, mesh, base.data.eval_batch_size, dataset)

        histories: list[list[dict]] = [[] for _ in cfgs]
        steady_s, epochs = 0.0, base.train.epochs
        t_fit = time.perf_counter()
        for ep in range(epochs):
            t0 = time.perf_counter()
            order = order0 if ep == 0 else jax.device_put(
                padded_order(n_train, base.train.seed, ep, steps * bs), repl)
            states, sums = compiled(states, x_all, y_all, order)
            sums = jax.device_get(sums)  # the epoch's one sync: (P,) sums per metric
            elapsed = time.perf_counter() - t0
            if ep > 0 or epochs == 1:
                steady_s += elapsed
            do_val = dataset.val is not None and ((ep + 1) % base.train.eval_every_epochs == 0
                                                  or ep + 1 == epochs)
            for i in range(len(cfgs)):
                s = {k: float(v[i]) for k, v in sums.items()}
                record = {"epoch": ep + 1, "step": (ep + 1) * steps,
                          "loss": s["loss_sum"] / max(s["count"], 1.0),
                          # every point trained on these examples in the same elapsed time
                          "examples_per_sec": s["count"] / max(elapsed, 1e-9)}
                if "correct" in s:
                    record["accuracy"] = s["correct"] / max(s["count"], 1.0)
                if s["nonfinite"]:
                    record["nonfinite_steps"] = int(s["nonfinite"])
                events[i].write("train", **record)
                if do_val:
                    st = _index(states, i)
                    record["val"] = evaluator.evaluate(st.params, st.rest, dataset.val)
                    events[i].write("eval", split="val", epoch=ep + 1, step=record["step"], **record["val"])
                histories[i].append(record)
            console.line(f"epoch {ep + 1}/{epochs} (x{len(cfgs)} vectorized) " + " | ".join(
                format_metrics({k: v for k, v in h[-1].items() if k in ("loss", "accuracy")})
                for h in histories))
        fit_s = time.perf_counter() - t_fit

        devices = parallel.device_summary(mesh)
        summaries = []
        for i, (cfg, d) in enumerate(zip(cfgs, dirs)):
            st = _index(states, i)
            test = evaluator.evaluate(st.params, st.rest, dataset.test)
            events[i].write("eval", split="test", epoch=epochs, step=epochs * steps, **test)
            last = histories[i][-1]
            if cfg.checkpoint.enabled:
                ckpt = Checkpointer(d / "checkpoints", keep=cfg.checkpoint.keep, async_save=False)
                ckpt.save(epochs * steps, {"params": st.params}, {"step": epochs * steps})
                ckpt.close()
            summary = {
                "config_name": cfg.name, "task": dataset.task, "test": test, "val": last.get("val", {}),
                "train": {"examples_per_sec": (n_train * (epochs - 1 if epochs > 1 else 1)) / steady_s
                          if steady_s else None, "loss": last["loss"], "epochs": epochs,
                          "steps": epochs * steps,
                          **({"accuracy": last["accuracy"]} if "accuracy" in last else {})},
                "time": {"compile_s": compile_s, "fit_s": fit_s, "data_s": data_s,
                         "total_s": time.perf_counter() - t_start},
                "devices": devices,
                "batch": {"global": bs, "per_device": bs // mesh.shape[parallel.DATA_AXIS]},
                "execution": {"on_device_data": True, "steps_per_call": steps,
                              "vectorized_points": len(cfgs)},
                "data": {"train": n_train, "val": len(dataset.val) if dataset.val else 0,
                         "test": len(dataset.test)},
                "stopped_early": None, "workdir": str(d), "status": "completed",
            }
            write_json(d / "summary.json", summary)
            events[i].write("summary", **{k: v for k, v in summary.items() if k in ("test", "train", "time")})
            console.line(f"{d.name}: test " + format_metrics(test))
            summaries.append(summary)
        return summaries
    finally:
        for e in events:
            e.close()
        for lock in locks:
            lock.release()
