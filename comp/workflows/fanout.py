"""Every (member, fold) a Ray task: `--executor ray` on a laptop's cores or a cluster.

The driver prepares what every fold of a member reads and that one process should make (word2vec
files, the pruned e5 folder), then submits one task per (member, fold), dearest first by the
planner's estimate, at most `jobs` at a time, none that cannot finish in the time left. A task
trains its fold through the same runner as a sequential run (`train_recipe(recipe, [fold])`), so
it writes the same fold markers into the same runs/ layout; the driver then assembles each member,
ensembles, pseudo-labels and reports as it always does, and a rerun in either mode skips what the
other finished.

Requirements of a cluster: every worker sees the driver's working directory at the same path
(NFS or a mounted bucket holding data/, models/, runs/) and has comp installed. The competition's
rows go to the workers once through the object store, not read again by every task; so does what
every fold of a network reads (its grid texts and vector ids, its frozen-feature cache), built by
one task before the member's fold tasks start (other members' folds run meanwhile).

Faults: a worker process that dies mid-fold is retried by Ray (`max_retries`); the fold restarts
from nothing (its marker is written last). A task that raises is one line naming member and fold;
the other tasks finish, then the run stops with an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from comp.config.schema import Recipe
from comp.core.utils import CompError, log, write_json

EXECUTORS = ("local", "ray")
MAX_RETRIES = 2  # a worker killed mid-fold (preempted, out of memory) is tried again
STATE = -1  # the fold number of the task that builds a member's shared state


@dataclasses.dataclass
class FoldTask:
    """One (member, fold) to train; `cost` the planner's seconds for it (dearest first)."""

    recipe: Recipe
    fold: int
    cost: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.recipe.name} fold {self.fold}"


@dataclasses.dataclass
class FanoutResult:
    """What a fan-out did: seconds per finished task, tasks left out for time, failures."""

    seconds: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)
    skipped: list[FoldTask] = dataclasses.field(default_factory=list)
    failed: list[tuple[FoldTask, str]] = dataclasses.field(default_factory=list)

    def member_seconds(self, name: str) -> float:
        """Seconds the member's finished tasks took, summed."""
        return sum(s for (n, _), s in self.seconds.items() if n == name)


def ray_module():
    """The ray package, or one line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise CompError("--executor ray needs Ray: pip install 'comp[ray]' (or pick "
                        "--executor local)") from None
    return ray


def start_ray(address: str | None, jobs: int | None) -> Any:
    """Connect to the cluster at `address` ("auto": the one `ray start` made here), or start
    a local one with `jobs` CPUs (default: every core)."""
    # every fold's own lines, not "[repeated 2x across cluster]" (read when ray is imported)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray = ray_module()
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=jobs or os.cpu_count() or 1, **kw)
    return ray


def task_resources(recipe: Recipe, cluster_gpus: float) -> dict[str, float]:
    """Ray resources of one fold: the recipe's [resources], else by member kind (a TF-IDF or
    e5-embedding member 1 CPU; a network 1 CPU and 1 GPU where the cluster has GPUs)."""
    r = recipe.resources
    gpus = r.num_gpus
    if gpus < 0:
        gpus = 1.0 if recipe.kind != "linear" and cluster_gpus >= 1 else 0.0
    out = {"num_cpus": r.num_cpus or 1.0, "num_gpus": gpus}
    if r.memory:
        out["memory"] = float(r.memory)
    return out


@contextlib.contextmanager
def _in_worker(cwd: str) -> Iterator[int]:
    """Inside a Ray task: the driver's directory, and torch and BLAS threads set from the CPUs
    Ray gave the task (yielded). Ray reuses worker processes, so this runs at every task: two
    tasks on two cores never run four threads."""
    import ray
    import torch
    from threadpoolctl import threadpool_limits

    os.chdir(cwd)  # recipes name data/, models/, runs/ relative to the driver's directory
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(cpus)
    with threadpool_limits(cpus):
        yield cpus


def _state_task(cwd: str, recipe: Recipe, comp: Any) -> tuple[bool, Any]:
    """Inside a Ray worker: what every fold of the member reads, built once for all its tasks
    (`MemberKind.shared_state`: a network's rows, its frozen-feature cache). Two returns: whether
    there is any (the driver reads only that), and the state the fold tasks take."""
    from comp.members.registry import create_member

    with _in_worker(cwd):
        state = create_member(recipe).shared_state(recipe, comp)
    return state is not None, state


def _fold_task(cwd: str, recipe: Recipe, fold: int, comp: Any, state: Any = None) -> float:
    """Inside a Ray worker: train one fold as a sequential run would, from the member's shared
    `state` when one was built; returns its seconds."""
    import ray

    from comp.data.competition import preloaded
    from comp.members.registry import create_member, train_recipe

    if state is not None:
        create_member(recipe).adopt_state(state)
    with _in_worker(cwd) as cpus:
        pid_file = Path(recipe.runs_dir) / ".tasks" / f"{recipe.name}-fold{fold}.json"
        write_json(pid_file, {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                              "member": recipe.name, "fold": fold, "cpus": cpus,
                              "shared_state": state is not None})
        t = time.time()
        with preloaded(recipe.data, comp):
            train_recipe(recipe, [fold])
        return time.time() - t


def prepare(recipe: Recipe, comp: Any) -> None:
    """What every fold of `recipe` reads and one process should make before the tasks start:
    the pruned e5 folder (a linear member's encoder, a network's backbones)."""
    if recipe.kind == "linear":
        if recipe.linear.features == "e5":
            from comp.members.linear import encoder_folder

            encoder_folder(recipe.linear, recipe.data, comp)
        return
    from comp.nn.backbones.e5 import resolve_backbone

    for b in recipe.model.backbones:
        resolve_backbone(b.path, data=recipe.data, comp=comp)


def run_fold_tasks(tasks: Sequence[FoldTask], jobs: int | None = None,
                   address: str | None = None, deadline: float | None = None
                   ) -> FanoutResult:
    """Train `tasks` as Ray tasks, dearest first, at most `jobs` at a time.

    Args:
        tasks: the (member, fold) pairs; folds already done are skipped by the runner inside
            the task (their marker is current), so a rerun costs little.
        jobs: tasks running at once (default: the cluster's CPUs).
        address: a running cluster ("auto", "ray://host:10001"); None starts a local one.
        deadline: a time.time() after which no task starts that its cost says would not
            finish (with 10 % grace); None = no budget.

    Returns:
        The seconds of each finished task, the tasks skipped for time and the failures (one
        line each, already logged).
    """
    from comp.data.competition import load_competition
    from comp.data.folds import load_folds
    from comp.members.registry import create_member

    result = FanoutResult()
    if not tasks:
        return result
    ray = start_ray(address, jobs)
    total = ray.cluster_resources()
    jobs = jobs or max(1, int(total.get("CPU", 1)))
    remote = ray.remote(_fold_task)
    loaded: dict[Any, Any] = {}  # data config -> competition, read once here
    refs: dict[Any, Any] = {}  # data config -> its one copy in the object store
    for recipe in {t.recipe.name: t.recipe for t in tasks}.values():
        cfg = recipe.data
        if cfg not in loaded:
            loaded[cfg] = load_competition(cfg)
            load_folds(loaded[cfg], cfg)  # the shared fold table, made here before any task
            refs[cfg] = ray.put(loaded[cfg])
        prepare(recipe, loaded[cfg])
    # dearest first; among equal costs fold by fold, so tasks running side by side belong to
    # different members and the second fold of a member finds its features on disk
    order = {name: i for i, name in enumerate(dict.fromkeys(t.recipe.name for t in tasks))}

    def rank(t: FoldTask) -> tuple:
        return -t.cost, t.fold, order[t.recipe.name]

    waiting = sorted(tasks, key=rank)
    # a member whose folds share state one task can build (`shared_state`) gets that task
    # first; its fold tasks wait for it without holding a CPU, other members' tasks fill in
    n_tasks = Counter(t.recipe.name for t in tasks)
    states: dict[str, Any] = {}  # member -> its state's object ref (None: each fold builds)
    held: dict[str, list[FoldTask]] = {}  # member -> fold tasks waiting for its state
    state_remote = ray.remote(_state_task)
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
                    default=1)
    running: dict[Any, tuple[FoldTask, float]] = {}
    cwd, n_done = os.getcwd(), 0
    gpus = f", {int(total['GPU'])} GPU(s)" if total.get("GPU") else ""
    log(f"ray: {len(waiting)} fold task(s) on {int(total.get('CPU', 0))} CPU(s){gpus}, "
        f"{jobs} at a time, dearest first")
    while waiting or running:
        while waiting and len(running) < jobs:
            t = waiting.pop(0)
            if deadline is not None and time.time() + t.cost > deadline + 0.1 * t.cost:
                log(f"ray: {t.label} not started: ~{t.cost / 60:.1f} min, "
                    f"{max(0.0, deadline - time.time()) / 60:.1f} left")
                result.skipped.append(t)
                continue
            name = t.recipe.name
            res = task_resources(t.recipe, total.get("GPU", 0))
            # (a GPU task's worker exits after it, Ray's default for GPU functions, so its
            # memory is given back between folds)
            opts = {**res, "max_retries": MAX_RETRIES}
            if name in held:  # its state is being built
                held[name].append(t)
                continue
            if name not in states and n_tasks[name] > 1 and shares_state(t.recipe):
                held[name] = [t]
                if create_member(t.recipe).state_threads(t.recipe):  # as many as one node has
                    opts["num_cpus"] = max(opts["num_cpus"], min(jobs, node_cpus))
                built, states[name] = state_remote.options(**opts, num_returns=2).remote(
                    cwd, t.recipe, refs[t.recipe.data])
                running[built] = (dataclasses.replace(t, fold=STATE), time.time())
                continue
            ref = remote.options(**opts).remote(cwd, t.recipe, t.fold, refs[t.recipe.data],
                                                states.get(name))
            running[ref] = (t, time.time())
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            t, started = running.pop(ref)
            if t.fold == STATE:
                if state_built(ray, ref, t.recipe.name):
                    log(f"ray: {t.recipe.name}: its rows built once for its "
                        f"{n_tasks[t.recipe.name]} fold tasks ({time.time() - started:.0f}s)")
                else:
                    states[t.recipe.name] = None
                waiting = sorted(waiting + held.pop(t.recipe.name), key=rank)
                continue
            try:
                result.seconds[t.recipe.name, t.fold] = ray.get(ref)
                n_done += 1
            except Exception as e:  # noqa: BLE001 - one line per failed task, the rest finish
                line = f"{t.label}: {one_line(e)}"
                log(f"ray: failed: {line}")
                result.failed.append((t, line))
        free = ray.available_resources()
        n_wait = len(waiting) + sum(map(len, held.values()))
        log(f"ray: {n_done} done, {len(running)} running, {n_wait} waiting; free "
            f"{free.get('CPU', 0):g} CPU" + (f", {free.get('GPU', 0):g} GPU"
                                             if total.get("GPU") else ""))
    return result


def shares_state(recipe: Recipe) -> bool:
    """Whether the member kind builds state its folds share (a network; TF-IDF members share
    their feature files on disk instead)."""
    from comp.members.registry import MemberKind, create_member

    return type(create_member(recipe)).shared_state is not MemberKind.shared_state


def state_built(ray: Any, ref: Any, name: str) -> bool:
    """Whether a member's state task built something for its fold tasks; when it failed, one
    line (the folds still train, each building its own)."""
    try:
        return bool(ray.get(ref))
    except Exception as e:  # noqa: BLE001 - the folds still train, each building its own
        log(f"ray: {name}: its shared rows were not built ({one_line(e)}); each fold builds "
            "its own")
        return False


def one_line(e: BaseException) -> str:
    """A task's error as one line: the exception the task raised (Ray wraps it) and the first
    line of its message."""
    cause = getattr(e, "cause", None) or e
    msg = str(cause)
    return f"{type(cause).__name__}: {msg.splitlines()[0]}" if msg else type(cause).__name__


def raise_failures(result: FanoutResult) -> None:
    """Stop a run whose tasks failed, naming each (member, fold)."""
    if result.failed:
        lines = "; ".join(line for _, line in result.failed)
        raise CompError(f"ray: {len(result.failed)} fold task(s) failed: {lines}")


def _tune_task(cwd: str, recipe: Recipe, kw: dict[str, Any]) -> dict[str, Any]:
    """Inside a Ray worker: one Optuna worker of the shared study."""
    from comp.workflows.tune import run_tune

    with _in_worker(cwd):
        return run_tune(recipe, plots=False, **kw)


def tune_on_ray(recipe: Recipe, jobs: int | None, address: str | None, trials: int = 20,
                storage: str | None = None, study: str | None = None, n_folds: int = 1,
                **kw: Any) -> dict[str, Any]:
    """`comp tune --executor ray`: `jobs` Optuna workers as Ray tasks sharing the study's RDB
    storage (SQLite on one machine, PostgreSQL for many), `trials` between them; each claims
    its worker index (and so its TPE seed) from the storage. Once all finish, the overlay is
    written from the whole study. Returns the summary of the worker that ran the most trials,
    with the study's best."""
    import optuna

    from comp.workflows.tune import default_storage, open_storage, write_overlay

    storage = storage or default_storage(recipe)
    if storage == "memory":
        raise CompError("--storage memory is one process's study; Ray workers need an RDB "
                        "(sqlite:///... or postgresql://...)")
    if trials < 1:
        raise CompError(f"--trials: must be >= 1, got {trials}")
    open_storage(storage)  # the schema is made here once, not raced by the workers
    ray = start_ray(address, jobs)
    jobs = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
    shares = [n for n in (trials // jobs + (i < trials % jobs) for i in range(jobs)) if n]
    remote = ray.remote(_tune_task)
    res = task_resources(recipe, ray.cluster_resources().get("GPU", 0))
    log(f"tune: {trials} trial(s) over {len(shares)} Optuna worker(s) as Ray tasks")
    refs = [remote.options(**res, max_retries=MAX_RETRIES).remote(
        os.getcwd(), recipe, {**kw, "trials": n, "storage": storage, "study": study,
                              "n_folds": n_folds}) for n in shares]
    results = ray.get(refs)
    out = results[0]
    st = optuna.load_study(study_name=out["study"], storage=open_storage(storage))
    if out.get("overlay"):
        write_overlay(st, recipe, Path(out["overlay"]), n_folds, out.get("fold_seed"))
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        out = {**out, "best_value": st.best_value, "best_params": st.best_params}
    return out
