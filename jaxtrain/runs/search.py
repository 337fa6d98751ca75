"""Hyperparameter search on Optuna: trials sampled from a space, trained as vectorized populations.

Ask and tell: the study proposes P trials (`population`), jaxtrain trains them, and tells
the study each one's validation metric (the final training loss without a validation split;
never a test metric). Trials that differ only in optimizer hyperparameters
(`model/optim.py:VECTOR_FIELDS`) train as one population, one compiled program, through the
vectorized sweep's path (lanes.py); the others train one after another.

`--prune` adds successive halving at epoch rungs 1, 3, 9, ...: a trial whose metric at a
rung is not in the top third of the study's trials at that rung is told PRUNED and stops;
its population is rebuilt from the lanes left (lanes.py: compact), so it costs nothing more.

The study lives in an Optuna storage: by default a journal file in the work directory, so
running the same command again continues it up to N trials in all; any Optuna URL
(`journal:PATH` on a shared file system, or an RDB URL) lets several processes share it.
Before asking, a worker counts finished and running trials against N, and a trial asked
past N in a race with another worker is given back unused.

What a search has written is never overwritten: a work directory belongs to one study
(search.json), a study to one space, metric and base config (its `made_for` attribute),
and a trial folder that holds a run is never reused. Trials are chosen on validation; their
runs do not evaluate the test split. Storage URLs are shown with their password masked.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from jaxtrain.config.metric_ref import Ranking
from jaxtrain.config.schema import Config, dump_yaml, load_config, to_dict
from jaxtrain.model.optim import VECTOR_FIELDS
from jaxtrain.runs import vsweep
from jaxtrain.runs.lanes import train_lanes
from jaxtrain.runs.space import Dimension, check_space, parse_space, sample, trial_config
from jaxtrain.training.hooks.protocol import Hook, Request, StepInfo
from jaxtrain.util.errors import Arg, NonFiniteError, UserError
from jaxtrain.util.events import Console, check_verbose
from jaxtrain.util.files import write_text_atomic
from jaxtrain.util.optional import require
from jaxtrain.util.secrets import mask_secrets

STUDY_FILE = "study.journal"
OWNER_FILE = "search.json"  # which study a search work directory belongs to
# Keys of the base config that do not change what a trial learns: a study continued with
# other values of these is still the same study.
NOT_COMPARED = ("name", "logging")
REDUCTION = 3  # successive halving keeps the top third at each rung; rungs at 1, 3, 9, ... epochs


@dataclasses.dataclass(frozen=True)
class Objective:
    """What chooses the trials: a validation metric, or the training loss without a validation split
    (config/metric_ref.py: Ranking.for_task, the sweep's choice too)."""
    ranking: Ranking

    @property
    def metric(self) -> str:
        return str(self.ranking.metric)

    @property
    def direction(self) -> str:
        """Optuna's name for the ranking's mode."""
        return "maximize" if self.ranking.mode == "max" else "minimize"

    def of_record(self, record: dict) -> float | None:
        """The metric in one epoch's record (None when that epoch was not evaluated)."""
        return self.ranking.metric.of_record(record)

    def rank_key(self, record: dict) -> tuple[float, float]:
        """Smaller ranks first (Ranking.record_key)."""
        return self.ranking.record_key(record)

    def of_summary(self, summary: dict) -> float | None:
        return self.ranking.metric.of_summary(summary)


def objective_for(dataset: Any) -> Objective:
    """The objective for a data set's task and splits (the search's data, loaded once)."""
    return Objective(Ranking.for_task(dataset.task, dataset.val is not None and len(dataset.val) > 0))


def rungs(epochs: int) -> tuple[int, ...]:
    """Epochs at which successive halving decides: 1, 3, 9, ... below the last epoch."""
    out, r = [], 1
    while r < epochs:
        out.append(r)
        r *= REDUCTION
    return tuple(out)


class Halving:
    """Successive halving for one group of trials (a population, or one trial alone) at epoch
    rungs: when every trial of the group still training has reached a rung, each is compared
    with the group and with every trial of the study that reached that rung before (any
    worker's: their values are in the storage), and only the top 1/REDUCTION go on. Deciding
    for the whole group at once makes the choice independent of the order of the lanes."""

    def __init__(self, study: Any, objective: Objective):
        self.study, self.objective = study, objective
        self.members: list[PruneHook] = []
        self._waiting: list[PruneHook] = []

    def arrive(self, hook: "PruneHook", epoch: int) -> bool:
        """Record `hook`'s rank key at a rung; True when this was the last of the group and at
        least one trial was pruned (the run must stop there to let them go)."""
        hook.trial.set_user_attr(f"rung_{epoch}", list(hook.rung_key))
        self._waiting.append(hook)
        if len(self._waiting) < len([m for m in self.members if m.pruned_at is None]):
            return False
        group = {m.trial.number for m in self._waiting}
        earlier = [tuple(t.user_attrs[f"rung_{epoch}"]) for t in self.study.get_trials(deepcopy=False)
                   if f"rung_{epoch}" in t.user_attrs and t.number not in group]
        keys = sorted(earlier + [m.rung_key for m in self._waiting])
        cut = keys[max(1, math.ceil(len(keys) / REDUCTION)) - 1]
        for m in self._waiting:
            if m.rung_key > cut:
                m.pruned_at = epoch
        self._waiting = []
        return any(m.pruned_at == epoch for m in self.members)


class PruneHook(Hook):
    """Reports a trial's metric to the study after each epoch; at a rung, leaves the decision
    to the group's Halving and stops the run when some trial of the group is pruned."""
    name = "search_pruning"
    stage = "decide"

    def __init__(self, trial: Any, objective: Objective, epochs: int, halving: Halving):
        self.trial, self.objective, self.rungs, self.halving = trial, objective, rungs(epochs), halving
        self.pruned_at: int | None = None
        self.rung_key: tuple[float, float] = (math.inf, math.inf)
        halving.members.append(self)

    def on_epoch_end(self, info: StepInfo) -> Request | None:
        value = self.objective.of_record(info.record.to_json())
        epoch = info.record.epoch
        if value is None or self.pruned_at is not None:
            return None
        self.trial.report(value, epoch)
        if epoch in self.rungs:
            self.rung_key = self.objective.rank_key(info.record.to_json())
            if self.halving.arrive(self, epoch):
                return Request(stop=f"successive halving at epoch {epoch}")
        return None

    def on_train_end(self, info: StepInfo) -> Request | None:
        if self.pruned_at is None:
            return None
        info.ctx.console.line(f"{info.ctx.workdir.name}: pruned at epoch {self.pruned_at} (successive halving)")
        return Request(summary={"search": {"pruned_at_epoch": self.pruned_at}})


@dataclasses.dataclass
class Search:
    """What every step of a search needs."""
    optuna: Any
    study: Any
    base: Config
    space: dict[str, Dimension]
    root: Path
    objective: Objective
    trials: int
    population: int
    prune: bool
    console: Console        # the search's own lines
    trial_console: Console  # the trials' runs' lines: quiet unless verbose=2
    dataset: Any            # the base config's data, loaded once: every trial with the same data trains on it
    verbose: int = 1

    def data_for(self, cfg: Config) -> Any | None:
        """The loaded data set when `cfg` reads the same data as the base config (else None: the
        trial loads its own, say when the space varies a data option)."""
        return self.dataset if cfg.data == self.base.data else None


def search(config: Any = None, space: dict[str, str] | list[str] | None = None, *, trials: int,
           population: int = 8, sampler: str = "tpe", prune: bool = False, storage: str | None = None,
           study: str | None = None, workdir: str | Path | None = None,
           overrides: list[str] | dict[str, Any] | None = None, seed: int | None = None,
           verbose: int = 1, console: Console | None = None) -> dict[str, Any]:
    """Search `space` ({'optimizer.learning_rate': 'loguniform(1e-4,1e-1)', ...}) for `trials`
    trials in all, `population` at a time. Returns the best trial's parameters and value, the
    paths of best.yaml, results.csv and the best trial's run directory, and the rows.
    `verbose`: 0 prints nothing, 1 one line per trial and the choice, 2 also every trial's run
    (its epochs, progress) and the results table."""
    check_verbose(verbose)
    optuna = require("optuna", "search", "jaxtrain search")
    if trials < 1 or population < 1:
        raise UserError(Arg("trials", trials), " ", Arg("population", population), ": both must be at least 1")
    if sampler not in ("tpe", "random"):
        raise UserError(Arg("sampler", sampler), ": choose tpe or random")
    dims = parse_space(space or [])
    base = load_config(config, overrides)
    check_space(base, dims)
    root = Path(workdir) if workdir else default_workdir(base, dims)
    console = console or Console(base.logging.progress, verbose=verbose)
    from jaxtrain import data as data_stage
    dataset = data_stage.load_dataset(base.data)  # once per search process: the task, then every trial
    objective = objective_for(dataset)
    name = study or base.name
    check_workdir(optuna, root, name, storage)  # before anything is opened or written
    opened = _undo_new_workdir(root, lambda: open_study(optuna, storage or f"journal:{root / STUDY_FILE}", name,
                                                         objective, dims, base_record(base, dims)))
    claim_workdir(root, name, storage)
    opened.sampler = _sampler(optuna, sampler, base.train.seed if seed is None else seed, opened)
    quiet = console if verbose >= 2 else Console("none")
    s = Search(optuna, opened, base, dims, root, objective, trials, population, prune, console, quiet, dataset,
               verbose)
    fail_stale_trials(s)
    console.line(f"search: study '{name}' ({_where(root, storage)}): {_taken(s)} of {trials} "
                 f"trials taken; choosing on {objective.metric} ({objective.direction}), {sampler} sampler"
                 + (", successive halving" if prune else ""))
    while batch := ask_batch(s):
        train_batch(s, batch)
    return finish(s)


def default_workdir(base: Config, space: dict[str, Dimension]) -> Path:
    """runs/<config name>-search-<digest>: the same for the same command (which continues its
    study), another for another space or base config (another study, in a folder of its own)."""
    import hashlib
    made = json.dumps([{k: d.describe() for k, d in space.items()}, base_record(base, space)], sort_keys=True)
    return Path("runs") / f"{base.name}-search-{hashlib.sha256(made.encode()).hexdigest()[:8]}"


def _where(root: Path, storage: str | None) -> str:
    """The storage as printed: its URL with any password masked."""
    return mask_secrets(storage) if storage else str(root / STUDY_FILE)


def check_workdir(optuna: Any, root: Path, name: str, storage: str | None) -> None:
    """A search work directory belongs to one study: refuse another study (or the same name in
    another storage), whose trial folders and results.csv would collide with the first's.
    Reads only: a refused search writes nothing."""
    marker = root / OWNER_FILE
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{marker} cannot be read ({e}); it names the study this work directory "
                            f"belongs to: restore it, or pass another ", Arg("workdir")) from None
        if (owner.get("study"), owner.get("storage")) != (name, _owner_storage(storage)):
            theirs, ours = f" ({owner.get('storage') or root / STUDY_FILE})", f" ({_where(root, storage)})"
            same = theirs == ours  # the storages are named only where they differ
            raise UserError(f"{root} holds study '{owner.get('study')}'{'' if same else theirs}, not study "
                            f"'{name}'{'' if same else ours}: a search work directory belongs to one study; "
                            f"pass another ", Arg("workdir"))
        return
    others: list[str] = []
    if (root / STUDY_FILE).is_file():  # a work directory of a jaxtrain without search.json
        names = optuna.get_all_study_names(_storage(optuna, f"journal:{root / STUDY_FILE}"))
        # with --storage elsewhere, every study of this journal is another study
        others = [n for n in names if n != name or storage is not None]
    elif root.is_dir() and any(root.glob("trial-*")):
        others = ["(unrecorded)"]
    if others:
        raise UserError(f"{root} holds the trials of study '{others[0]}', not study '{name}' "
                        f"({_where(root, storage)}): a search work directory belongs to one study; "
                        f"pass another ", Arg("workdir"))


def _owner_storage(storage: str | None) -> str | None:
    return mask_secrets(storage) if storage else None  # None: the journal in the work directory


def claim_workdir(root: Path, name: str, storage: str | None) -> None:
    """Record the study this work directory belongs to (once; check_workdir compares)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / OWNER_FILE).exists():
        write_text_atomic(root / OWNER_FILE, json.dumps({"study": name, "storage": _owner_storage(storage)}) + "\n")


def _undo_new_workdir(root: Path, opening: Any) -> Any:
    """`opening()`; if it fails, the work directory it created (for the default journal) is
    removed again: a refused search leaves nothing behind."""
    created = not root.exists()
    try:
        return opening()
    except BaseException:
        if created and root.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        raise


def base_record(base: Config, space: dict[str, Dimension]) -> dict[str, Any]:
    """The base config as a study records it: {section.key: value} of the resolved config less
    the searched keys (and NOT_COMPARED), as JSON gives it back."""
    tree = to_dict(base)
    for key in space:  # a searched key, however deep, leaves the record
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    flat = {}
    for section, value in tree.items():
        if section in NOT_COMPARED:
            continue
        for key, v in (value.items() if isinstance(value, dict) else [("", value)]):
            flat[f"{section}.{key}" if key else section] = v
    return json.loads(json.dumps(flat, default=str))


def base_differences(recorded: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """'key recorded (this search: ours)' for every key both records have that differs (a key
    only one has is a config schema of another jaxtrain version, not a choice of the user's)."""
    def text(v: Any) -> str:
        return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)

    return [f"{k}={text(recorded[k])} (this search: {text(ours[k])})"
            for k in sorted(recorded.keys() & ours.keys()) if recorded[k] != ours[k]]


def open_study(optuna: Any, storage: str, name: str, objective: Objective, space: dict[str, Dimension],
               base: dict[str, Any]) -> Any:
    """The study `name` in `storage`, created if new; refused if it was made for another space,
    metric or base config (its trials would mean something else)."""
    study = _load_or_create(optuna, storage, name, objective)
    # One attribute, written in one call: a second process opening the study while the first
    # creates it sees either nothing or the whole description, never half of it.
    described = {"space": {k: d.describe() for k, d in space.items()}, "metric": objective.metric, "base": base}
    if study.user_attrs.get("made_for") is None:
        study.set_user_attr("made_for", described)
    made_for = study.user_attrs["made_for"]  # read back: of two first writers, the last one's stands
    where = f"study '{name}' in {mask_secrets(storage)}"
    if (made_for.get("space"), made_for.get("metric")) != (described["space"], described["metric"]):
        raise UserError(f"{where} searches {made_for.get('space')} on {made_for.get('metric')}, not "
                        f"{described['space']} on {described['metric']}; pass another ", Arg("study"), " and ",
                        Arg("workdir"))
    differing = base_differences(made_for.get("base") or {}, base)  # a study of an older jaxtrain has none
    if differing:
        raise UserError(f"{where} was made with another base config: {', '.join(differing[:5])}"
                        f"{f' and {len(differing) - 5} more' if len(differing) > 5 else ''}; pass the same "
                        "CONFIG and ", Arg("overrides"), ", or another ", Arg("study"), " and ", Arg("workdir"))
    return study


def _load_or_create(optuna: Any, storage: str, name: str, objective: Objective) -> Any:
    """Loaded when it exists (which writes nothing to the storage), created otherwise."""
    pruner = optuna.pruners.NopPruner()  # jaxtrain decides pruning for a whole population (Halving)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # jaxtrain prints its own lines
    for attempt in range(4):
        try:
            opened = _storage(optuna, storage)
            try:
                return optuna.load_study(study_name=name, storage=opened, pruner=pruner)
            except KeyError:  # no study of that name yet
                return optuna.create_study(storage=opened, study_name=name, pruner=pruner,
                                           direction=objective.direction, load_if_exists=True)
        except Exception as e:  # a bad URL, a missing database driver, an unreachable server
            if not isinstance(e, (ImportError, ValueError, OSError)) and not type(e).__module__.startswith("sqlalchemy"):
                raise
            # Workers starting together on an empty database race to create Optuna's tables: the
            # loser sees a duplicate key; the tables are there a moment later.
            if type(e).__name__ == "IntegrityError" and attempt < 3:
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(Arg("storage", mask_secrets(storage)), f": Optuna cannot open it ({mask_secrets(reason)})") from None
    raise AssertionError("unreachable")


def _storage(optuna: Any, url: str) -> Any:
    """`journal:PATH` -> a journal file storage (created with its folder); else the URL as is."""
    if not url.startswith("journal:"):
        return url
    path = Path(url[len("journal:"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.journal
    return journal.JournalStorage(journal.JournalFileBackend(str(path)))


def _sampler(optuna: Any, kind: str, seed: int, study: Any) -> Any:
    """Seeded; offset by the trials already taken, so a continued study (or a second worker)
    does not draw the first points again. TPE's constant liar spreads the trials of one batch."""
    seed = seed + len(study.trials)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant_liar is marked experimental
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(s: Search) -> None:
    """Trials left running by a search process of this machine that has ended (killed) are
    told FAILED, so that they do not count against N: a killed search loses only those."""
    host = socket.gethostname()
    for t in s.study.get_trials(deepcopy=False, states=(s.optuna.trial.TrialState.RUNNING,)):
        who, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if who == host and pid.isdigit() and not _alive(int(pid)):
            s.study.tell(t.number, state=s.optuna.trial.TrialState.FAIL)
            s.console.line(f"search: trial {t.number} was left running by an ended process; marked failed")


def _counted(s: Search) -> list[Any]:
    """Trials that count against N: finished, running, or trained and failed (a non-finite
    loss: an outcome of the space, so N bounds the work), not those that never trained (given
    back, left by a killed process, or unable to start)."""
    states = s.optuna.trial.TrialState
    return [t for t in s.study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus") and (
        t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)
        or (t.state == states.FAIL and "error" in t.user_attrs))]


def _taken(s: Search) -> int:
    return len(_counted(s))


def ask_batch(s: Search) -> list[Any]:
    """Up to `population` new trials, never past N in all: asked trials beyond the first N
    (another worker asked at the same moment) are given back unused."""
    room = min(s.population, s.trials - _taken(s))
    if room <= 0:
        return []
    batch = [s.study.ask() for _ in range(room)]
    for trial in batch:
        trial.set_user_attr("worker", _worker())
    first = {t.number for t in sorted(_counted(s), key=lambda t: t.number)[:s.trials]}
    kept = []
    for trial in batch:
        if trial.number in first:
            kept.append(trial)
        else:
            trial.set_user_attr("surplus", True)
            s.study.tell(trial, state=s.optuna.trial.TrialState.FAIL)
    return kept


def train_batch(s: Search, batch: list[Any]) -> None:
    """Sample, group, train and tell a batch of trials; each group is told as soon as it ends,
    so a killed search loses only the trials in flight. Trials that cannot start (their folder
    holds a run, an error before or while training) are told FAIL at once, never left RUNNING."""
    told: set[int] = set()
    try:
        values = [sample(t, s.space) for t in batch]
        # Trials are chosen on validation: their runs leave the test split alone (best.yaml keeps it).
        cfgs = [load_config(trial_config(s.base, s.space, v), {"train.evaluate_test": False}) for v in values]
        dirs = [s.root / f"trial-{t.number:04d}" for t in batch]
        for trial, workdir in zip(batch, dirs):
            trial.set_user_attr("workdir", str(workdir))
        held = [d for d in dirs if d.exists() and (not d.is_dir() or any(d.iterdir()))]
        if held:  # never reuse a trial folder, never overwrite what it holds
            raise UserError(f"search: {held[0]} already holds a run (a trial folder is never reused); "
                            f"trials {', '.join(str(t.number) for t in batch)} told FAIL; pass another ", Arg("workdir"))
        _announce_batch(s, batch, cfgs)
        groups = vsweep.vector_groups(cfgs) if s.population > 1 else [[i] for i in range(len(batch))]
        for group in groups:
            t0 = time.perf_counter()
            results = _train_group(s, [batch[i] for i in group], [cfgs[i] for i in group], [dirs[i] for i in group])
            for i, (summary, pruned_at, population) in zip(group, results):
                _tell(s, batch[i], summary, pruned_at, population, time.perf_counter() - t0)
                told.add(batch[i].number)
    except BaseException as e:
        _abandon(s, [t for t in batch if t.number not in told], e)
        raise


def _announce_batch(s: Search, batch: list[Any], cfgs: list[Config]) -> None:
    groups = vsweep.vector_groups(cfgs) if s.population > 1 else [[i] for i in range(len(batch))]
    numbers = ", ".join(str(t.number) for t in batch)
    if len(batch) > 1 and len(groups) == 1:
        s.console.line(f"search: trials {numbers} train as one population (one compiled program)")
    elif len(batch) > 1:
        s.console.line(f"search: trials {numbers} train in {len(groups)} groups: {_why_apart(s, cfgs)}")


def _abandon(s: Search, trials: list[Any], error: BaseException) -> None:
    """Tell FAIL the trials that did not start or finish because of `error` (they do not count
    against N); the error itself goes on to the caller."""
    reason = mask_secrets(str(error).splitlines()[0] if str(error) else type(error).__name__)
    for trial in trials:
        try:
            trial.set_user_attr("abandoned", reason)
            s.study.tell(trial, state=s.optuna.trial.TrialState.FAIL)
        except Exception:  # the storage itself may be what failed; the first error is the one to show
            pass


def _why_apart(s: Search, cfgs: list[Config]) -> str:
    """One line: why the trials of a batch cannot all train in one program."""
    if s.population == 1:
        return "--population 1 trains one trial at a time"
    why = vsweep.why_not_vectorized(cfgs[0])
    if why:
        return why
    vectorizable = {f"optimizer.{f}" for f in VECTOR_FIELDS}
    apart = [k for k in s.space if k not in vectorizable and len({str(_value(c, k)) for c in cfgs}) > 1]
    return (f"they differ in {', '.join(apart) or 'keys'} (only optimizer "
            f"{'/'.join(VECTOR_FIELDS)} can vary inside one compiled program)")


def _value(cfg: Config, key: str) -> Any:
    value: Any = to_dict(cfg)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _train_group(s: Search, trials: list[Any], cfgs: list[Config],
                 dirs: list[Path]) -> list[tuple[dict | None, int | None, int]]:
    """(summary, epoch pruned at, trials in the program that trained it) of each trial of a
    group: one population, or one trial alone. A population that hits a non-finite loss trains
    its trials one by one (the failing trial alone fails: summary None)."""
    halving = Halving(s.study, s.objective)
    hooks = [PruneHook(t, s.objective, c.train.epochs, halving) if s.prune else None for t, c in zip(trials, cfgs)]
    data = s.data_for(cfgs[0])  # a group shares its data options: only optimizer fields vary in it
    if len(trials) > 1:
        try:
            summaries = train_lanes(cfgs, dirs, dataset=data, console=s.trial_console,
                                    extra_hooks=[[h] if h else [] for h in hooks],
                                    leaves=lambda lane: any(h is not None and h.pruned_at is not None
                                                            for h in lane.hooks if isinstance(h, PruneHook)))
            return [(summary, h.pruned_at if h else None, len(trials)) for summary, h in zip(summaries, hooks)]
        except NonFiniteError as e:
            s.console.line(f"search: the population of trials {', '.join(str(t.number) for t in trials)} "
                           f"stopped ({e}); training them one at a time")
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            return [r for t, c, d in zip(trials, cfgs, dirs) for r in _train_group(s, [t], [c], [d])]
    try:
        summary = train_lanes(cfgs, dirs, dataset=data, console=s.trial_console,
                              extra_hooks=[[hooks[0]] if hooks[0] else []])[0]
    except NonFiniteError as e:
        trials[0].set_user_attr("error", str(e).splitlines()[0] if str(e) else "non-finite loss")
        return [(None, None, 1)]
    return [(summary, hooks[0].pruned_at if hooks[0] else None, 1)]


def _tell(s: Search, trial: Any, summary: dict | None, pruned_at: int | None, population: int,
          seconds: float) -> None:
    """Tell the study how a trial ended; what results.csv shows rides along as user attributes."""
    states = s.optuna.trial.TrialState
    trial.set_user_attr("population", population)
    if summary is None:
        if not Path(trial.user_attrs["workdir"]).exists():  # a row never names a folder that is not there
            trial.set_user_attr("workdir", None)
        s.study.tell(trial, state=states.FAIL)
        _say(s, trial.number, "FAIL", trial.user_attrs.get("error", "").split(";")[0], trial.params)
        return
    value = s.objective.of_summary(summary)
    trial.set_user_attr("value", value)
    trial.set_user_attr("epochs", int(summary["train"]["epochs"]))
    trial.set_user_attr("time_s", round(float(summary["time"].get("total_s", seconds)), 3))
    if pruned_at is not None:
        s.study.tell(trial, state=states.PRUNED)
        state, what = "PRUNED", f"pruned at epoch {pruned_at}"
    elif value is None or not math.isfinite(value):
        trial.set_user_attr("error", f"{s.objective.metric} is {value}")
        s.study.tell(trial, state=states.FAIL)
        state, what = "FAIL", f"{s.objective.metric} is {value}"
    else:
        s.study.tell(trial, value)
        state, what = "COMPLETE", f"{s.objective.metric} {value:.4g}"
    _say(s, trial.number, state, f"{what}, {summary['train']['epochs']} epochs, "
         f"{trial.user_attrs['time_s']:.3g} s", trial.params)


def _say(s: Search, number: int, state: str, what: str, params: dict[str, Any]) -> None:
    """The one console line of a trial."""
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    s.console.line(f"search: trial {number} {state}: {what} ({shown})")


def result_rows(s: Search) -> list[dict[str, Any]]:
    """One row per trial of the study (every worker's), in trial order."""
    rows = []
    for t in s.study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        rows.append({"number": t.number, "state": t.state.name, **{k: t.params.get(k) for k in s.space},
                     s.objective.metric: t.user_attrs.get("value"), "epochs": t.user_attrs.get("epochs"),
                     "time_s": t.user_attrs.get("time_s"), "population": t.user_attrs.get("population"),
                     "workdir": t.user_attrs.get("workdir"),
                     "error": t.user_attrs.get("error") or t.user_attrs.get("abandoned")})
    return rows


def finish(s: Search) -> dict[str, Any]:
    """results.csv, best.yaml, the plots; the console's table and choice; what `search` returns."""
    rows = result_rows(s)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["number"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(s.root / "results.csv", text.getvalue())
    complete = [t for t in s.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = s.study.best_trial if complete else None
    shown = ["number", "state", *s.space, s.objective.metric, "epochs", "time_s", "population"]
    if s.verbose >= 2:  # verbose 1: the trials' own lines were the table
        for line in _table(rows, shown, best.number if best else None):
            s.console.line(line)
    states = [r["state"] for r in rows]
    failed = sum(1 for t in s.study.get_trials(deepcopy=False) if t.state.name == "FAIL" and "error" in t.user_attrs)
    s.console.line(f"search: {len(_counted(s))} of {s.trials} trials: {states.count('COMPLETE')} complete, "
                   f"{states.count('PRUNED')} pruned, {failed} failed (--trials counts failed trials too)")
    out: dict[str, Any] = {"best_params": None, "best_value": None, "metric": s.objective.metric,
                           "best_yaml": None, "best_workdir": None, "results": s.root / "results.csv",
                           "rows": rows}
    if best is None:
        s.console.line(f"search: no trial completed; wrote {s.root}/results.csv")
        return out
    best_cfg = trial_config(s.base, s.space, best.params)
    write_text_atomic(s.root / "best.yaml", dump_yaml(best_cfg))
    out.update(best_params=dict(best.params), best_value=best.value, best_yaml=s.root / "best.yaml",
               best_workdir=Path(best.user_attrs["workdir"]) if "workdir" in best.user_attrs else None)
    s.console.line(f"search: best trial {best.number} by {s.objective.metric} = {best.value:.4g} "
                   f"({', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in best.params.items())}); "
                   f"run directory {out['best_workdir']}; the test split played no part in the choice")
    s.console.line(f"search: wrote {s.root}/results.csv and best.yaml (jaxtrain train {s.root}/best.yaml)")
    write_plots(s)
    return out


def _table(rows: list[dict[str, Any]], shown: list[str], best: int | None) -> list[str]:
    """The results as a markdown table, the best trial's row in bold."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for r in rows:
        text = [cell(r.get(c)) for c in shown]
        lines.append("| " + " | ".join(f"**{t}**" if r["number"] == best and t else t for t in text) + " |")
    return lines


def write_plots(s: Search) -> None:
    """history.png and importance.png with Optuna's matplotlib plots (the `report` extra);
    a note instead of a plot that cannot be drawn."""
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        s.console.line("search: no plots without matplotlib (pip install 'jaxtrain[report]')")
        return
    import matplotlib
    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    vis = s.optuna.visualization.matplotlib
    plots = {"history.png": vis.plot_optimization_history, "importance.png": vis.plot_param_importances}
    if importlib.util.find_spec("sklearn") is None:
        plots.pop("importance.png")
        s.console.line("search: no importance.png: Optuna's importance evaluator needs scikit-learn "
                       "(pip install scikit-learn)")
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(s.study)
            fig = ax.figure
            fig.tight_layout()
            tmp = s.root / f".{name}.{os.getpid()}.png"
            fig.savefig(tmp, dpi=110)
            plt.close(fig)
            tmp.replace(s.root / name)
        except (ValueError, RuntimeError) as e:
            s.console.line(f"search: no {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    s.console.line(f"search: plots in {s.root}: {', '.join(n for n in plots if (s.root / n).exists())}")
