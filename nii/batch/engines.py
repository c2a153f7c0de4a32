"""Where a batch run's scans are analysed: a process pool here, or Ray Data on a cluster.

Both engines are thin: they read the run's to-do spool (one
:meth:`~nii.batch.sources.ArchiveItem.to_json` line per scan), hand lines to
a :class:`~nii.batch.analyse.ScanAnalyser` built once per worker, and yield
each scan's record as it comes back, in whatever order. Committing,
progress and the summary are the caller's (:func:`nii.batch.run.run_batch`).

``local``
    A pool of spawned processes on this machine, each building its
    pipeline once (the pool's initializer) and using its share of the
    cores. A scan that kills its worker (a decoder crash, the OOM killer)
    costs a fresh pool and becomes an error row; the run goes on.
``ray``
    Ray Data: ``read_text`` over the spool, ``map_batches`` with the
    analyser as a callable class on ``concurrency`` actors, one GPU share
    each when the cluster has GPUs. The spool and the archive must be on
    storage every node sees. An actor that dies (a decoder crash, out of
    memory) stops the run, keeping the parts committed; run it again to
    carry on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from nii.batch.analyse import OUTPUT_COLUMN, ScanAnalyser, failed_record
from nii.batch.sources import ArchiveItem

__all__ = ["ENGINES", "ActorPlan", "LocalEngine", "RayEngine", "actor_plan", "available_cores", "make_engine"]

_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:]*: ")

#: Engine names, as ``--engine`` takes them.
ENGINES = ("local", "ray")


def available_cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _spooled_lines(todo: Sequence[Path]) -> Iterator[str]:
    for path in todo:
        with path.open(encoding="utf-8") as lines:
            yield from (line.rstrip("\n") for line in lines)


def _tasks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    task: list[str] = []
    for line in lines:
        task.append(line)
        if len(task) == size:
            yield task
            task = []
    if task:
        yield task


# The local engine's per-process analyser, built by the pool's initializer.
_ANALYSER: ScanAnalyser | None = None
_STARTUP_ERROR: str | None = None


def _start_worker(analyser_kwargs: Mapping[str, Any], parent: int) -> None:
    global _ANALYSER, _STARTUP_ERROR
    # Ctrl-C is the parent's to handle: it stops the pool and commits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, the OOM killer) cannot stop its
    # pool: each worker notices it is orphaned and ends itself, instead of
    # holding a gigabyte and the caller's pipes for ever. The parent's pid
    # comes from the parent: one killed while this worker was still
    # starting would otherwise be recorded as init's, and never missed.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        _ANALYSER = ScanAnalyser(**analyser_kwargs)
    except Exception as err:  # noqa: BLE001 - reported by the first task, with its reason
        _STARTUP_ERROR = " ".join(str(err).split()) or type(err).__name__


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _analyse_lines(lines: Sequence[str]) -> list[dict[str, Any]]:
    if _ANALYSER is None:
        raise ValueError(f"a worker could not build the pipeline: {_STARTUP_ERROR}")
    return [_ANALYSER.analyse(ArchiveItem.from_json(line)) for line in lines]


class LocalEngine:
    """A process pool on this machine.

    Parameters
    ----------
    analyser_kwargs : mapping
        :class:`~nii.batch.analyse.ScanAnalyser` arguments (``threads`` is
        set here: the cores shared out among the workers).
    workers : int, optional
        Worker processes (default, and at most: the cores available).
    batch_size : int
        Scans per task sent to a worker: a few, so that the cost of a
        round trip is shared, and few enough to keep workers evenly busy.
    """

    name = "local"

    def __init__(self, analyser_kwargs: Mapping[str, Any], *, workers: int | None = None,
                 batch_size: int = 4) -> None:
        # More processes than cores only queue for them, each holding its
        # own models (about 1 GB): a larger request gets one per core.
        self.workers = min(workers or available_cores(), available_cores())
        self.batch_size = batch_size
        self.analyser_kwargs = {**analyser_kwargs, "threads": max(1, available_cores() // self.workers)}

    def _pool(self, workers: int) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: a forked copy of a parent holding locks (OpenMP,
        # a logging handler) can deadlock; a spawned worker starts clean.
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(self.analyser_kwargs, os.getpid()))

    def records(self, todo: Sequence[Path]) -> Iterator[dict[str, Any]]:
        """Each spooled scan's record, as workers finish them."""
        tasks = _tasks(_spooled_lines(todo), self.batch_size)
        # Two tasks queued per worker keep every one busy; no more, so
        # memory does not grow with the archive.
        window = 2 * self.workers
        pool = self._pool(self.workers)
        pending: dict[concurrent.futures.Future, list[str]] = {}
        try:
            while True:
                broken: list[str] = []
                for task in tasks:
                    try:
                        pending[pool.submit(_analyse_lines, task)] = task
                    except BrokenProcessPool:
                        broken += task
                        break
                    if len(pending) >= window:
                        break
                if not pending and not broken:
                    return
                if not broken:
                    finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        task = pending.pop(future)
                        if isinstance(future.exception(), BrokenProcessPool):
                            broken += task
                        else:
                            yield from future.result()
                if broken:
                    # Which of the scans in flight killed its worker is unknown:
                    # each goes again alone, and the one that kills it again
                    # is the culprit.
                    suspects = broken + [line for task in pending.values() for line in task]
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    yield from self._one_at_a_time(suspects)
                    pool = self._pool(self.workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _one_at_a_time(self, suspects: Sequence[str]) -> Iterator[dict[str, Any]]:
        pool = self._pool(1)
        try:
            for line in suspects:
                try:
                    yield from pool.submit(_analyse_lines, [line]).result()
                except BrokenProcessPool:
                    yield failed_record(ArchiveItem.from_json(line),
                                        "the worker analysing it died (a decoder crash, or out of memory)")
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class ActorPlan:
    """How a Ray run spreads over a cluster: what each analyser actor asks for.

    Attributes
    ----------
    actors : int
        Actors, each holding one pipeline.
    threads : int
        Threads each actor's pipeline runs (:func:`~nii.batch.analyse.limit_threads`).
    num_cpus, num_gpus : float
        Ray resources each actor reserves for the whole run.
    """

    actors: int
    threads: int
    num_cpus: float
    num_gpus: float


def actor_plan(cluster_resources: Mapping[str, float], workers: int | None = None) -> ActorPlan:
    """Actors and their resources for a cluster (``ray.cluster_resources()``).

    One actor per GPU by default (the learned models are the heavy part),
    else one per CPU. Each actor reserves an equal share of the GPUs (at
    most one each) and of all CPUs but one: that one is left for Ray Data's
    light upstream work, which would otherwise wait forever behind actors
    that hold their cores for the whole run. Each actor still runs its
    share of the cores in threads.

    Parameters
    ----------
    cluster_resources : mapping
        ``{"CPU": n, "GPU": m, ...}``; missing CPU counts as 1, GPU as 0.
    workers : int, optional
        Actors wanted (default as above).

    Returns
    -------
    ActorPlan
    """
    cpus = float(cluster_resources.get("CPU", 1))
    gpus = float(cluster_resources.get("GPU", 0))
    actors = workers or max(1, int(gpus or cpus))
    return ActorPlan(actors=actors, threads=max(1, int(cpus // actors)),
                     num_cpus=max(cpus - 1, 0.5) / actors, num_gpus=min(1.0, gpus / actors) if gpus else 0.0)


class RayEngine:
    """Ray Data over a cluster (a local instance when no address is given).

    Parameters
    ----------
    analyser_kwargs : mapping
        :class:`~nii.batch.analyse.ScanAnalyser` arguments.
    workers : int, optional
        Actors, each holding one pipeline (default: the cluster's GPUs, or
        else its CPUs).
    address : str, optional
        ``ray.init`` address (``auto``, ``ray://head:10001``); a new local
        instance when None.
    batch_size : int
        Scans per ``map_batches`` call.
    """

    name = "ray"

    def __init__(self, analyser_kwargs: Mapping[str, Any], *, workers: int | None = None,
                 address: str | None = None, batch_size: int = 4) -> None:
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ValueError("the ray engine needs Ray Data: pip install 'ray[data]'") from None
        self.analyser_kwargs = dict(analyser_kwargs)
        self.workers = workers
        self.address = address
        self.batch_size = batch_size

    def records(self, todo: Sequence[Path]) -> Iterator[dict[str, Any]]:
        """Each spooled scan's record, as actors finish them."""
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            # A local instance gets at least two CPUs: one core's machine
            # still needs one for its actor and one for the upstream work.
            # A new local instance says at start whether it uses token
            # authentication, past --quiet and into the run's one-line
            # report. It lives only for this run; the notice is not the
            # user's to act on. Joining a cluster (--ray-address), it stays.
            notices = logging.getLogger("ray._private.authentication")
            level = notices.level
            if not self.address:
                notices.setLevel(logging.ERROR)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=False, num_cpus=None if self.address else max(2, available_cores()))
            finally:
                notices.setLevel(level)
        ray_logger, context = logging.getLogger("ray.data"), ray.data.DataContext.get_current()
        saved = (ray_logger.level, context.enable_progress_bars, context.print_on_execution_start)
        try:
            # The run's own bar counts scans; Ray Data's bars and notes would
            # interleave with it, and its failures end this run as one line
            # (below), not as Ray's stack traces. Put back afterwards: the
            # caller's own Ray Data work keeps its logs and bars.
            ray_logger.setLevel(logging.CRITICAL)
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            plan = actor_plan(ray.cluster_resources(), self.workers)
            self.workers = plan.actors
            kwargs = {**self.analyser_kwargs, "threads": plan.threads}
            if plan.num_gpus:
                # Said outright: an actor given a GPU whose torch cannot use
                # it fails at once, instead of running months of archive on
                # the CPU while the GPU sits reserved.
                kwargs.setdefault("device", "cuda")
            # A spool file is one block; cut into batches, so that every
            # actor gets work and records come back as they are done.
            lines = ray.data.read_text([str(p) for p in todo], num_cpus=0).repartition(
                target_num_rows_per_block=self.batch_size)
            with warnings.catch_warnings():
                # Ray deprecates **ray_remote_args but has no named parameter
                # for these two yet (its actor pool reads them from there);
                # pyproject holds Ray below 2.64, which removes them.
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                analysed = lines.map_batches(
                    ScanAnalyser, fn_constructor_kwargs=kwargs, batch_size=self.batch_size,
                    compute=ray.data.ActorPoolStrategy(size=plan.actors),
                    num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
                    # Restarted and retried, an actor killed by a scan would die
                    # on it again, forever: stop instead, keeping what is committed.
                    max_restarts=0, max_task_retries=0)
            try:
                for batch in analysed.iter_batches(batch_size=None, batch_format="numpy"):
                    for record in batch[OUTPUT_COLUMN]:
                        yield json.loads(record)
            except ray.exceptions.RayError as err:
                raise ValueError(f"the ray engine stopped ({_ray_failure_reason(err)}); what was committed is kept: "
                                 "run again to carry on, or use --engine local, which turns a scan that kills its worker "
                                 "into an error row") from None
        finally:
            ray_logger.setLevel(saved[0])
            context.enable_progress_bars, context.print_on_execution_start = saved[1:]
            if started_here:
                ray.shutdown()


def _ray_failure_reason(err: BaseException) -> str:
    """The root cause in a Ray error's text: its last ``SomeError: ...`` line.

    Ray wraps an actor's exception in lines naming the actor, its pid and
    the worker's traceback; the cause (``RuntimeError: Found no NVIDIA
    driver ...``) comes last. Terminal colour codes are dropped.
    """
    lines = [_ANSI_CODE.sub("", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    causes = [line for line in lines if _EXCEPTION_LINE.match(line)]
    reason = causes[-1] if causes else lines[0] if lines else type(err).__name__
    return reason[:300]


def make_engine(name: str, analyser_kwargs: Mapping[str, Any], *, workers: int | None = None,
                ray_address: str | None = None) -> LocalEngine | RayEngine:
    """The engine ``name`` (one of :data:`ENGINES`).

    Raises
    ------
    ValueError
        An unknown engine, or ``ray`` without Ray installed.
    """
    if name == "local":
        if ray_address is not None:
            raise ValueError("--ray-address is for --engine ray")
        return LocalEngine(analyser_kwargs, workers=workers)
    if name == "ray":
        return RayEngine(analyser_kwargs, workers=workers, address=ray_address)
    raise ValueError(f"unknown engine {name!r}; engines: {', '.join(ENGINES)}")
