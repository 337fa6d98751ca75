"""Plant known bugs one at a time and check that the tests catch each one.

A developer tool, not part of CI. Each mutant names a file, a piece of its text, the text
to plant instead, and the few tests that must fail with it. For each mutant the repository
(jaxtrain/, tests/, configs/, pyproject.toml) is copied into a temporary folder, the text is
replaced there (it must occur exactly once), and only the mutant's tests are run: the
mutant is caught when pytest reports a failing test (exit status 1). A collection error
or a crash is reported as an error, not as a catch.

    python scripts/mutation_check.py              # every mutant
    python scripts/mutation_check.py --list       # names and the tests each one runs
    python scripts/mutation_check.py step_ nan    # mutants whose name contains any word given
    python scripts/mutation_check.py --baseline   # first check that each selection passes unmutated

Exit status 0 when every mutant selected was caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
COPIED = ("jaxtrain", "tests", "configs", "pyproject.toml")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str           # relative to the repository root
    original: str       # must occur exactly once in the file
    planted: str
    tests: tuple[str, ...]   # pytest node ids or files; at least one must fail
    why: str = ""


ORACLE = "tests/test_step_oracle.py::test_one_step_on_a_padded_batch_matches_numpy"
STRATEGIES = "tests/test_parallel_strategies.py"
SIGNAL_IN_PROCESS = "tests/test_reliability_crash.py::test_signal_in_process_stops_at_the_next_call_with_a_checkpoint"

MUTANTS: list[Mutant] = [
    # ---- the six bugs an audit found escaping the suite (issue 21)
    Mutant("accuracy_counts_padding", "jaxtrain/engine/step.py",
           'm["correct"] = jnp.sum((jnp.argmax(outputs, -1) == y) * mask)',
           'm["correct"] = jnp.sum(jnp.argmax(outputs, -1) == y).astype(jnp.float32)',
           ("tests/test_step_oracle.py::test_classification_counts_only_the_real_rows_of_a_padded_batch",),
           "training accuracy counted over the padded rows"),
    Mutant("normalizer_fitted_on_every_split", "jaxtrain/data/preprocess.py",
           '_fit_outputs(raw, parts["train"], enc["train"], stats, cfg)',
           '_fit_outputs(raw, parts["train"], np.concatenate(list(enc.values())), stats, cfg)',
           ("tests/test_data_sources.py::test_idx_normalizer_is_fitted_on_the_training_images_only",
            "tests/test_data_sources.py::test_npz_normalizer_is_fitted_on_train_not_on_val_or_test",
            "tests/test_data_tf.py::test_tfds_normalizer_is_fitted_on_the_training_split_only"),
           "image/array normalizer fitted on train+val+test"),
    Mutant("warmup_cosine_one_step_too_long", "jaxtrain/model/optim.py",
           "warmup_steps=warmup, decay_steps=total)", "warmup_steps=warmup, decay_steps=total + 1)",
           ("tests/test_optim.py::test_cosine_schedules_match_the_closed_form_at_every_step",),
           "the cosine decays over one step too many and never reaches 0"),
    Mutant("sigterm_exits_0", "jaxtrain/cli/main.py", "return 128 + e.signum", "return 0",
           ("tests/test_reliability_crash.py::test_sigterm_saves_and_exits_then_resume_finishes_identically",),
           "a preempted run exits 0"),
    Mutant("sigterm_raises_no_preempted", "jaxtrain/training/hooks/signals.py",
           "        if self.received is not None:\n            raise Preempted",
           "        if self.received == signal.SIGINT:\n            raise Preempted",
           (SIGNAL_IN_PROCESS,), "SIGTERM stops the loop but the run reports success"),
    Mutant("na_kept_as_a_category", "jaxtrain/data/csvfile.py",
           "return pc.if_else(marker, pa.scalar(None, pa.string()), stripped)",
           "return stripped",
           ("tests/test_data_arrow.py::test_missing_markers_in_a_category_column_are_missing_not_categories",),
           "NA / n/a in a category column become a category"),
    # ---- the step
    Mutant("loss_divides_by_the_padded_batch", "jaxtrain/engine/step.py",
           "denominator = jnp.maximum(jnp.sum(mask), 1.0)", "denominator = jnp.asarray(mask.shape[0], jnp.float32)",
           (ORACLE,), "the masked mean divides by the batch size, padding included"),
    Mutant("pmap_sums_gradients", "jaxtrain/engine/step.py",
           "grads, loss = jax.lax.pmean((grads, loss), axis_name)",
           "grads, loss = jax.lax.psum((grads, loss), axis_name)",
           (ORACLE,), "the pmap step adds the devices' gradients instead of averaging them"),
    Mutant("pmap_ignores_where_the_padding_is", "jaxtrain/engine/step.py",
           "/ jax.lax.psum(1, axis_name))", ")",
           (ORACLE,), "each device's loss is divided by the global count without the shard factor"),
    Mutant("accumulation_keeps_the_last_microbatch", "jaxtrain/engine/step.py",
           "loss + l, jax.tree.map(jnp.add, grads, g)", "loss + l, g",
           ("tests/test_step_accumulation_ema.py::test_accumulated_step_equals_the_whole_padded_batch",),
           "gradient accumulation keeps only the last microbatch's gradient"),
    Mutant("ema_weights_swapped", "jaxtrain/engine/step.py",
           "ema_decay * e + (1.0 - ema_decay) * p", "ema_decay * p + (1.0 - ema_decay) * e",
           ("tests/test_step_accumulation_ema.py::test_ema_matches_numpy_and_evaluation_uses_it",),
           "the moving average weighs the new parameters by the decay"),
    # ---- the encoder
    Mutant("unseen_category_becomes_the_first", "jaxtrain/data/transforms.py",
           "value_set=pa.array(categories, pa.string())), -1)", "value_set=pa.array(categories, pa.string())), 0)",
           ("tests/test_data_clean.py::test_one_hot_unseen_category_maps_to_zeros",),
           "an unseen category is encoded as the first known one"),
    Mutant("hashed_text_not_normalized", "jaxtrain/data/transforms.py",
           "out.ravel()[keys] = counts / norm[key_rows]", "out.ravel()[keys] = counts",
           ("tests/test_data_clean.py::test_hashed_text_deterministic_and_independent",),
           "hashed bag-of-words rows are not scaled to unit length"),
    # ---- resume positions
    Mutant("resume_restarts_the_epoch", "jaxtrain/training/run.py",
           "self.epoch, self.step_in_epoch, self.global_step = (position.epoch, position.step_in_epoch,",
           "self.epoch, self.step_in_epoch, self.global_step = (position.epoch, 0,",
           ("tests/test_checkpoint_resume.py::test_resume_mid_epoch_is_bit_exact",),
           "a mid-epoch resume starts its epoch again"),
    # ---- the schedules
    Mutant("step_decay_not_staircase", "jaxtrain/model/optim.py", "staircase=True)", "staircase=False)",
           ("tests/test_optim.py::test_schedules_follow_their_formulas",),
           "the step schedule decays smoothly instead of in steps"),
    Mutant("warmup_one_step_longer", "jaxtrain/model/optim.py",
           "warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))",
           "warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)) + 1)",
           ("tests/test_optim.py::test_cosine_schedules_match_the_closed_form_at_every_step",),
           "the warmup lasts one step longer than configured"),
    # ---- the sharding rules
    Mutant("fsdp_replicates_everything", "jaxtrain/parallel/placement.py",
           "            if dim is None:\n                return repl", "            if True:\n                return repl",
           (STRATEGIES + "::test_fsdp_shards_params_and_optimizer_state_on_a_two_axis_mesh",),
           "fsdp keeps a full copy of every parameter on every device"),
    Mutant("fsdp_shards_over_the_data_axis", "jaxtrain/parallel/placement.py",
           "axis = FSDP_AXIS if FSDP_AXIS in self.mesh.shape else DATA_AXIS", "axis = DATA_AXIS",
           (STRATEGIES + "::test_fsdp_shards_params_and_optimizer_state_on_a_two_axis_mesh",),
           "fsdp splits parameters over the data axis of a two-axis mesh"),
    Mutant("pmap_devices_read_the_whole_order", "jaxtrain/engine/executors.py",
           "in_specs=(P(), P(), P(), columns, P()),", "in_specs=(P(), P(), P(), P(), P()),",
           (STRATEGIES + "::test_eight_devices_match_one_device",),
           "every pmap device reads the whole batch's order instead of its own columns"),
    Mutant("cpu_calls_in_flight_unbounded", "jaxtrain/parallel/placement.py",
           "return CPU_CALLS_IN_FLIGHT if len(local) > 1", "return None if len(local) > 1",
           ("tests/test_parallel_load.py::test_only_several_cpu_devices_in_a_process_limit_the_calls_in_flight",),
           "the host runs an epoch of calls ahead of 8 CPU devices (XLA's CPU client deadlocks)"),
    Mutant("pacer_waits_one_call_late", "jaxtrain/engine/engine.py",
           "if len(self.in_flight) > self.limit:", "if len(self.in_flight) > self.limit + 1:",
           ("tests/test_parallel_load.py::test_the_pacer_waits_for_the_call_limit_calls_back",),
           "one call more in flight than the limit"),
    Mutant("rendezvous_abort_passes_through", "jaxtrain/cli/fatal_guard.py",
           "if any(m in line for m in MARKERS):", "if False:",
           ("tests/test_parallel_load.py::test_a_rendezvous_timeout_ends_in_one_line_not_a_cpp_stack",),
           "XLA's rendezvous abort reaches the user as SIGABRT and C++ stacks"),
    # ---- signals (issue 21)
    Mutant("ignored_sigint_taken_over", "jaxtrain/training/hooks/signals.py",
           "if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:",
           "if False:",
           ("tests/test_reliability_crash.py::test_a_run_started_with_sigint_ignored_keeps_ignoring_it",),
           "a run started with SIGINT ignored installs its handler anyway"),
    # ---- the figures a run prints
    Mutant("save_wait_charged_to_checkpointing", "jaxtrain/training/hooks/checkpointing.py",
           "with info.ctx.clock.phase(Phase.DEVICE_COMPUTE):", "with info.ctx.clock.phase(Phase.CHECKPOINTING):",
           ("tests/test_accounting.py::test_a_save_between_calls_charges_the_device_wait_to_training_not_checkpointing",),
           "a save's wait for the device is charged to checkpointing: step times far too short"),
    Mutant("vectorized_flops_per_example_of_one_point", "jaxtrain/training/summary.py",
           "plan.batch_size * (plan.points or 1)", "plan.batch_size",
           ("tests/test_sweep_vectorized.py::test_vectorized_points_equal_their_separate_runs",),
           "a vectorized point's FLOPs per example count the whole population"),
    Mutant("epoch_flops_of_the_last_program", "jaxtrain/training/accounting.py",
           "flops = sum(counted) / steps if steps > 0 and all(counted) else self.flops", "flops = self.flops",
           ("tests/test_search.py::test_a_survivor_of_two_rungs_reports_the_flops_of_each_population_it_trained_in",),
           "a search survivor reports only its last, smallest program's FLOPs"),
    Mutant("study_description_without_its_metric", "jaxtrain/runs/search.py",
           'study.set_user_attr("made_for", described)',
           'study.set_user_attr("made_for", {"space": described["space"], "metric": None})',
           ("tests/test_search.py::test_population_search_writes_results_and_a_best_yaml_that_trains",),
           "a study stored without its metric: the same search run again refuses it"),
    # ---- a run at its edges (issue 28)
    Mutant("console_write_on_a_closed_pipe", "jaxtrain/util/events.py",
           "        if not write_out(text, self.stream):\n",
           "        self.stream.write(text)\n        self.stream.flush()\n        if False:\n",
           ("tests/test_run_edges.py::test_a_console_on_a_closed_pipe_goes_quiet_and_the_pipe_points_at_devnull",),
           "`jaxtrain train | head -2`: a BrokenPipeError traceback, exit 1, no summary.json"),
    Mutant("flops_of_the_k_step_call", "jaxtrain/engine/engine.py",
           "            compiled = self._compiled.get(1)\n",
           "            compiled = self._compiled.get(self.k) or next(iter(self._compiled.values()))\n",
           ("tests/test_run_edges.py::test_flops_are_one_steps_however_the_k_step_scan_is_unrolled",),
           "an unrolled K-step call's loop body counted as one step: a CPU run 'beats' its peak"),
    Mutant("hooks_not_a_verdict", "jaxtrain/training/hooks/profiling.py",
           '"hooks-bound": (Phase.HOOKS,), "host-bound": (Phase.OTHER,)}',
           '"dispatch-bound2": (Phase.HOOKS, Phase.OTHER)}',
           ("tests/test_run_edges.py::test_the_issues_table_hooks_and_logging_at_85_percent_is_hooks_bound",),
           "hooks and logging at 85% of the time, and the verdict names another row"),
    Mutant("gloo_pieces_relayed", "jaxtrain/cli/launch.py",
           "    return any(w in GLOO_WORDS for w in words) and all(w in GLOO_WORDS or w.isdigit() for w in words)",
           "    return False",
           ("tests/test_run_edges.py::test_the_relay_drops_torn_off_pieces_of_gloos_line_and_keeps_every_line_of_the_program",),
           "a torn-off piece of Gloo's connection line reaches the user"),
    # ---- issue 29: seven bugs that passed the whole suite, each now caught by a test of its module
    Mutant("steady_epochs_drop_the_last", "jaxtrain/training/accounting.py",
           'firsts = {e["segment"]: i for i, e in reversed(list(enumerate(epochs)))}',
           'firsts = {e["segment"]: i for i, e in enumerate(epochs)}',
           ("tests/test_escapes.py::test_steady_epochs_drop_each_segments_first_epoch_not_its_last",),
           "a slow first epoch (5 s, 1 s, 1 s) counted in the steady step time: 300 ms instead of 100"),
    Mutant("onnx_inf_not_missing", "jaxtrain/runs/onnx_table.py",
           'missing = g.op("Or", [g.op("IsNaN", [name], at + "nan"), g.op("IsInf", [name], at + "inf")], at + "missing")',
           'missing = g.op("IsNaN", [name], at + "missing")',
           ("tests/test_escapes.py::test_onnx_takes_inf_as_missing_like_predict",),
           "the ONNX graph clips inf instead of filling it: onnxruntime and predict disagree"),
    Mutant("keep_parses_a_numeric_feature", "jaxtrain/data/user_input.py",
           "table = csvfile.read_all(layout, schema.numeric - set(keep))",
           "table = csvfile.read_all(layout, schema.numeric)",
           ("tests/test_escapes.py::test_keep_of_a_numeric_feature_column_copies_its_text_and_still_encodes_it",),
           "--keep of a numeric feature prints 3.5 and 7 for 3.50 and 007"),
    Mutant("clipped_line_never_printed", "jaxtrain/runs/predict.py",
           'if c.outliers.get(name) and stats.outliers.action == "clip":',
           'if c.outliers.get(name) and stats.outliers.action == "clipped":',
           ("tests/test_escapes.py::test_predict_says_per_column_how_many_values_it_clipped",),
           "predict clips values past the bounds silently"),
    Mutant("best_trial_is_the_highest", "jaxtrain/runs/search.py",
           "best = s.study.best_trial if complete else None",
           "best = max(complete, key=lambda t: t.value) if complete else None",
           ("tests/test_escapes.py::test_a_regression_search_chooses_the_trial_with_the_lowest_val_mse",),
           "a regression search writes its worst trial to best.yaml"),
    Mutant("launch_signal_128_minus_n", "jaxtrain/cli/launch.py",
           "code = code if code >= 0 else 128 - code", "code = code if code >= 0 else 128 + code",
           ("tests/test_escapes.py::test_launch_reports_a_child_killed_by_a_signal_as_128_plus_its_number",),
           "launch reports 119 for a SIGKILLed process instead of 137"),
    Mutant("resume_drops_the_epoch_sums", "jaxtrain/training/run.py",
           "        if position.epoch_sums:\n", "        if False:\n",
           ("tests/test_escapes.py::test_a_run_resumed_mid_epoch_writes_the_straight_runs_epoch_records",),
           "the resumed epoch's record covers only the steps after the resume"),
    Mutant("last_partial_batch_dropped", "jaxtrain/engine/plan.py",
           "return max(1, math.ceil(n_train / batch_size))", "return max(1, n_train // batch_size)",
           ("tests/test_escapes.py::test_steps_per_epoch_cover_every_row_once_the_last_batch_partial",),
           "steps per epoch rounded down: the last partial batch never trained"),
]


def copy_repo(dest: pathlib.Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def plant(repo: pathlib.Path, m: Mutant) -> None:
    path = repo / m.file
    text = path.read_text()
    found = text.count(m.original)
    if found != 1:
        raise SystemExit(f"mutant {m.name}: the original text occurs {found} times in {m.file}, "
                         "expected once; update the mutant to the current code")
    path.write_text(text.replace(m.original, m.planted))


def run_tests(repo: pathlib.Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def check(m: Mutant, baseline: bool, timeout: float) -> str:
    """'caught', 'MISSED' or 'ERROR ...' for one mutant."""
    with tempfile.TemporaryDirectory(prefix="jaxtrain-mutant-") as tmp:
        repo = pathlib.Path(tmp)
        copy_repo(repo)
        if baseline:
            rc, last = run_tests(repo, m.tests, timeout)
            if rc != 0:
                return f"ERROR the tests fail without the mutant (exit {rc}: {last})"
        plant(repo, m)
        rc, last = run_tests(repo, m.tests, timeout)
    if rc == 1:
        return "caught"
    if rc == 0:
        return "MISSED"
    return f"ERROR exit {rc}: {last}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true",
                        help="run each selection unmutated first (it must pass)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file} ({m.why})\n    " + "\n    ".join(m.tests))
        return 0
    if not chosen:
        print("no mutant matches", file=sys.stderr)
        return 2
    missed = 0
    started = time.perf_counter()
    for i, m in enumerate(chosen, 1):
        t0 = time.perf_counter()
        verdict = check(m, args.baseline, args.timeout)
        missed += verdict != "caught"
        print(f"[{i}/{len(chosen)}] {m.name:40s} {verdict}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} mutants caught in {time.perf_counter() - started:.0f} s")
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
