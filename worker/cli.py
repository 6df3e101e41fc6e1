"""CLI commands of the job layer: ``grpo-guard worker``, ``grpo-guard submit``, ``grpo-guard runs``.

``worker`` starts one Celery worker process per GPU (``-c 1 -P prefork --max-tasks-per-child=1``,
``CUDA_VISIBLE_DEVICES`` set per process, STACK.md C6). ``submit`` validates a config and hands
it to ``worker.submit`` (insert, then enqueue), printing the run id (two with ``--ab``). ``runs`` lists, shows, stops, resumes, clones,
sweeps and deletes runs. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from grpo_guard.config import parse_overrides
from grpo_guard.store.cli import data_dir_option

if TYPE_CHECKING:
    from worker.submit import Submitted


def _store_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Store errors become one clean line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from grpo_guard.store.db import StoreError

        try:
            return fn(*args, **kwargs)
        except StoreError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


# ---- worker ---------------------------------------------------------------------------------
def parse_gpus(spec: str | None) -> list[str | None]:
    """"0,1" or "0 1" -> ["0", "1"] (a worker per GPU); "0+1,2+3" -> ["0+1", "2+3"] (a worker
    owning GPUs 0 and 1, for runs with num_gpus 2, and one owning 2 and 3); None or "" -> [None]
    (one worker, default device). UUIDs (``GPU-…``, ``MIG-…``) work wherever an index does."""
    from grpo_guard.training.distributed import is_gpu_id

    if not spec or not spec.strip():
        return [None]
    workers = [w for w in spec.replace(",", " ").split() if w]
    seen: list[str] = []
    for w in workers:
        for g in w.split("+"):
            if not is_gpu_id(g):
                raise click.BadParameter(f"GPUs are indices like 0, 0,1 or 0+1 (one worker owning both), or "
                                         f"UUIDs (GPU-…, as nvidia-smi -L prints); "
                                         f"got {w!r}", param_hint="--gpus")
            seen.append(g)
    if len(set(seen)) != len(seen):
        raise click.BadParameter("a GPU is listed twice; each GPU belongs to one worker", param_hint="--gpus")
    return workers


def worker_command(gpu: str | None, *, queue: str | None = None, loglevel: str = "info",
                   name: str | None = None) -> list[str]:
    """The command line of one worker process."""
    from worker.celery_app import worker_queues

    node = name or (f"gpu{gpu.replace('+', '-')}@%h" if gpu is not None else "cpu@%h")
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker",
            "-Q", worker_queues(len(gpu.split("+")) if gpu else 1, queue), "-c", "1", "-P", "prefork", "--max-tasks-per-child=1",
            "--prefetch-multiplier=1", "-n", node, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def spawn_worker(gpu: str | None = None, *, queue: str | None = None, loglevel: str = "info",
                 name: str | None = None, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """Start one worker process (also used by ``grpo-guard serve`` and the tests)."""
    from grpo_guard.training.cpu import training_env

    child_env = training_env(os.environ if env is None else env)  # OpenMP defaults before its torch
    child_env["GG_SUPERVISED"] = "1"  # worker.shutdown.exit_without_pool_finalizers
    if gpu is not None:  # "0+1": this worker owns GPUs 0 and 1 (multi-GPU runs launch on both)
        child_env["CUDA_VISIBLE_DEVICES"] = str(gpu).replace("+", ",")
        child_env["GG_WORKER_GPU"] = str(gpu).replace("+", ",")
    return subprocess.Popen(worker_command(gpu, queue=queue, loglevel=loglevel, name=name), env=child_env, **popen)


def supervised_popen() -> dict[str, Any]:
    """Popen options for workers that a ``grpo-guard`` process supervises: their own session, so
    a Ctrl-C in the terminal reaches only the supervisor, which then sends each worker exactly one
    SIGTERM (Celery's warm shutdown; the terminal's SIGINT plus a forwarded one made a second,
    cold shutdown that killed the run after Celery's soft-shutdown wait); and, on Linux, a
    SIGTERM of their own should the supervisor die without stopping them."""
    opts: dict[str, Any] = {"start_new_session": True}
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
        opts["preexec_fn"] = lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return opts


def signal_workers(procs: Sequence[subprocess.Popen], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.send_signal(sig)


def stop_workers(procs: Sequence[subprocess.Popen], timeout: float = 60.0) -> list[int]:
    """Warm-stop every worker at once (each running trainer checkpoints and ends its run
    ``interrupted``), wait up to ``timeout`` s, then cold-stop (SIGQUIT) and finally kill what is
    left, whole process groups. Returns the exit codes."""
    signal_workers(procs, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for sig, wait in ((None, None), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
            deadline = time.monotonic() + wait
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        if all(p.poll() is not None for p in procs):
            break
    return [p.returncode if p.returncode is not None else -9 for p in procs]


@click.command("worker")
@data_dir_option()
@click.option("--gpus", default=None, metavar="0,1",
              help="GPU indices; one worker process per GPU. Join GPUs with + for one worker owning several "
                   "(runs with num_gpus > 1): --gpus 0+1,2+3. Omit for one worker on the default device.")
@click.option("--queue", default=None, help="Queue to consume (default GG_QUEUE or 'runs').")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--name", default=None, help="Celery node name (single worker only), e.g. box1@%h.")
@_store_errors
def worker_cmd(gpus: str | None, queue: str | None, loglevel: str, name: str | None) -> None:
    """Run training workers: one process per GPU, one run at a time each."""
    from grpo_guard.store import db
    from worker.celery_app import broker_url

    db.verify_schema()  # fail here, with the fix, rather than inside every task
    targets = parse_gpus(gpus)
    if name and len(targets) > 1:
        raise click.BadParameter("--name works with a single worker", param_hint="--name")
    click.echo(f"store {db.redact(db.database_url())}; broker {db.redact(broker_url())}; "
               f"{len(targets)} worker(s): " + ", ".join(f"GPU {g}" if g else "default device" for g in targets), err=True)
    procs = [spawn_worker(g, queue=queue, loglevel=loglevel, name=name, **supervised_popen()) for g in targets]
    signals = []

    def forward(signum: int, _frame: Any) -> None:
        # the first Ctrl-C / SIGTERM: a warm stop (runs checkpoint, end `interrupted`); the next: cold
        signals.append(signum)
        if len(signals) == 1:
            click.echo("stopping: running runs checkpoint and end interrupted (they resume when a worker "
                       "starts); Ctrl-C again to stop at once", err=True)
        signal_workers(procs, signal.SIGTERM if len(signals) == 1 else signal.SIGQUIT)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [p.wait() for p in procs]
    sys.exit(max((c for c in codes if c is not None), default=0))


# ---- submit ---------------------------------------------------------------------------------
def _warn(submitted: Submitted) -> None:
    """A task the broker did not take is a warning: the run is stored and stays queued."""
    for w in submitted.warnings:
        click.echo(f"warning: {w}", err=True)


def wait_for(run_id: int, *, timeout: float | None = None, quiet: bool = False) -> str:
    """Poll the run until it ends (or ``timeout``); print progress on stderr; return the status."""
    from grpo_guard.store.queries import get_run

    deadline = None if timeout is None else time.monotonic() + timeout
    shown: tuple[str, int] | None = None
    while True:
        row = get_run(run_id)
        if not quiet and (row.status, row.step) != shown:
            shown = (row.status, row.step)
            click.echo(f"run {run_id}: {row.status} (attempt {row.attempt}) step {row.step}/{row.total}", err=True)
        if row.is_terminal:
            if row.status == "failed" and not quiet:
                click.echo(f"run {run_id} failed: {row.error}", err=True)
            return row.status
        if deadline is not None and time.monotonic() > deadline:
            return row.status
        time.sleep(0.5)


def _finish_wait(run_ids: Sequence[int], timeout: float | None) -> None:
    """Wait for every run (``timeout`` is for all of them together); exit 1 unless all succeeded."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ok = True
    for run_id in run_ids:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        status = wait_for(run_id, timeout=left)
        if status != "succeeded":
            ok = False
            if status not in ("failed", "cancelled"):
                click.echo(f"run {run_id}: still {status} after {timeout:g}s", err=True)
    if not ok:
        sys.exit(1)


@click.command("submit")
@data_dir_option()
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--epochs", type=int, default=None, help="Shorthand for --set epochs=N.")
@click.option("--name", default=None, help="Run name (default: algorithm-backbone-id).")
@click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable).")
@click.option("--ab", is_flag=True,
              help="Queue an A/B pair: the config as Flow-GRPO and as GRPO-Guard (DanceGRPO and DanceGRPO-Guard "
                   "for a dance algorithm), same seeds, linked as a pair; prints both ids.")
@click.option("--wait", is_flag=True, help="Wait for the run(s) to end; exit non-zero unless all succeeded.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--no-model-check", is_flag=True,
              help="Do not check here that a local `model` path or a relative prompt file exists (they may exist "
                   "only where the workers run; the workers check them).")
@_store_errors
def submit_cmd(config_path: str, overrides: tuple[str, ...], epochs: int | None, name: str | None,
               tags: tuple[str, ...], ab: bool, wait: bool, timeout: float | None, no_model_check: bool) -> None:
    """Validate CONFIG.yaml, queue a run (or an A/B pair with --ab), print its id(s)."""
    from grpo_guard.config import ConfigError
    from grpo_guard.config.validation import validate_run_config
    from grpo_guard.experiments.pairing import ab_arms
    from worker.experiment import submit_pair
    from worker.submit import submit_runs

    items = list(overrides) + ([f"epochs={epochs}"] if epochs is not None else [])
    config = validate_run_config(config_path, items, check_paths=not no_model_check)
    config = config.with_prompt_files_inlined(config_dir=os.path.dirname(os.path.abspath(config_path)),
                                              missing_ok=no_model_check)
    try:  # an A/B pair is stored as a 2-arm, 1-seed experiment
        submitted = (submit_pair(ab_arms(config), name=name or "", tags=tags) if ab
                     else submit_runs([(config.algorithm, config)], name=name or "", tags=tags))
    except ConfigError:
        raise  # the command group reports it field by field
    except ValueError as e:  # a name or tag over the store's limits: nothing was written
        raise click.ClickException(str(e)) from None
    _warn(submitted)
    for run_id in submitted.ids:
        click.echo(run_id)
    if wait:
        _finish_wait(submitted.ids, timeout)


# ---- runs -----------------------------------------------------------------------------------
def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


@click.group("runs")
def runs_group() -> None:
    """List, inspect, stop, resume, clone and recover runs."""


@runs_group.command("list")
@data_dir_option(must_exist=True)
@click.option("--status", multiple=True, help="Only runs with this status (repeatable).")
@click.option("--tag", default=None, help="Only runs with this tag.")
@click.option("--text", default=None, help="Text in the name, notes, algorithm or backbone.")
@click.option("--limit", type=int, default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_store_errors
def runs_list(status: tuple[str, ...], tag: str | None, text: str | None, limit: int, as_json: bool) -> None:
    """The runs table, newest first."""
    from grpo_guard.store import queries

    try:
        rows = queries.list_runs(status=list(status) or None, tag=tag, text=text, limit=limit)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        _dump([r.to_dict() for r in rows])
        return
    click.echo(f"{'ID':>5}  {'STATUS':10} {'STEP':>11}  {'PROXY':>7} {'GOLD':>7}  {'CREATED':16}  NAME")
    for r in rows:
        status_text = r.status + ("?" if r.stale else "")
        click.echo(f"{r.id:>5}  {status_text:10} {f'{r.step}/{r.total}':>11}  {_fmt(r.latest_proxy):>7} "
                   f"{_fmt(r.latest_gold):>7}  {r.created_at:%Y-%m-%d %H:%M}  {r.name}"
                   + (f"  [{', '.join(r.tags)}]" if r.tags else ""))


@runs_group.command("show")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every column, the config included).")
@_store_errors
def runs_show(run_id: int, as_json: bool) -> None:
    """Everything about one run: status, progress, worker, error and traceback, config."""
    from grpo_guard.store import queries

    row = queries.get_run(run_id)
    if as_json:
        d = row.to_dict()
        d["checkpoints"] = [c.to_dict() for c in queries.checkpoints(run_id)]
        _dump(d)
        return
    click.echo(f"run {row.id}: {row.name}\n  status     {row.status} (attempt {row.attempt})"
               + (": a worker shut down; it resumes from its checkpoint when a worker starts"
                  if row.status == "interrupted" else ""))
    stored = f"last stored step {row.last_step}" if row.last_step >= 0 else "no step stored yet"
    click.echo(f"  progress   step {row.step}/{row.total}; {stored}")
    click.echo(f"  eval       proxy {_fmt(row.last_proxy)}, gold {_fmt(row.last_gold)} at step {row.last_eval_step}")
    if not row.config_error:
        from grpo_guard.config import ConfigError, RunConfig

        try:
            note = RunConfig.from_dict(row.config).ema_notice(row.last_eval_step)
        except (ConfigError, ValueError, TypeError):
            note = None
        if note:
            click.echo(f"  note       {note}")
    if row.worker_host:
        click.echo(f"  worker     {row.worker_host}" + (f" GPU {row.worker_gpu}" if row.worker_gpu else "")
                   + f"; heartbeat {row.heartbeat_at}")
    click.echo(f"  created    {row.created_at}; started {row.started_at}; finished {row.finished_at}")
    if row.parent_id:
        click.echo(f"  parent     run {row.parent_id}")
    if row.tags:
        click.echo(f"  tags       {', '.join(row.tags)}")
    if row.notes:
        click.echo(f"  notes      {row.notes}")
    ck = [c for c in queries.checkpoints(run_id) if c.on_disk]
    if ck:
        click.echo(f"  checkpoint step {ck[-1].step}: {ck[-1].location}")
    if row.error:
        click.echo(f"  error      {row.error}")
    if row.traceback:
        click.echo("  traceback\n" + "\n".join("    " + line for line in row.traceback.rstrip().splitlines()))
    if row.config_error:
        click.echo(f"  config     {row.config_error}")
    else:
        click.echo("  config     " + ", ".join(f"{k}={row.config[k]!r}" for k in (row.config_fields_set or sorted(row.config))
                                               if k in row.config))


@runs_group.command("stop")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@_store_errors
def runs_stop(run_id: int, as_json: bool) -> None:
    """Stop a run: a queued one is cancelled; a running one checkpoints and ends cancelled."""
    from grpo_guard.store import queries

    status = queries.request_stop(run_id)
    if as_json:
        _dump({"id": run_id, "status": status})
    else:
        click.echo(f"run {run_id}: {status}")


@runs_group.command("resume")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit non-zero unless it succeeded.")
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@_store_errors
def runs_resume(run_id: int, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Queue a failed, cancelled or interrupted run again; it continues from its last checkpoint."""
    from grpo_guard.store import queries
    from worker.submit import resume

    _warn(resume(run_id))
    row = queries.get_run(run_id)
    if as_json:
        _dump({"id": run_id, "status": row.status, "attempt": row.attempt})
    else:
        click.echo(f"run {run_id}: queued (attempt {row.attempt})")
    if wait:
        _finish_wait([run_id], timeout)


@runs_group.command("clone")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Change a config field (repeatable).")
@click.option("--epochs", type=int, default=None, help="Shorthand for --set epochs=N.")
@click.option("--wait", is_flag=True, help="Wait for the new run to end; exit non-zero unless it succeeded.")
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
@_store_errors
def runs_clone(run_id: int, overrides: Sequence[str], epochs: int | None, wait: bool, timeout: float | None,
               as_json: bool) -> None:
    """Start a new run from a copy of RUN_ID's config; prints the new id."""
    from worker.submit import clone

    changes = parse_overrides(list(overrides) + ([f"epochs={epochs}"] if epochs is not None else []))
    submitted = clone(run_id, changes)
    _warn(submitted)
    new_id = submitted.ids[0]
    if as_json:
        _dump({"id": new_id, "parent_id": run_id, "status": "queued"})
    else:
        click.echo(new_id)
    if wait:
        _finish_wait([new_id], timeout)


@runs_group.command("best")
@click.argument("run_id", type=int)
@data_dir_option(must_exist=True)
@_store_errors
def runs_best(run_id: int) -> None:
    """Print the path of the run's best-gold checkpoint."""
    from grpo_guard.export.facts import no_best_reason
    from grpo_guard.store import queries

    run = queries.get_run(run_id)
    best = queries.best_checkpoint(run_id)
    if best is None:
        raise click.ClickException(no_best_reason(run_id, queries.checkpoints(run_id), run.config or {},
                                                  fix=f"`grpo-guard runs show {run_id}` lists its checkpoints"))
    click.echo(queries.artifact_path(best.location))


@runs_group.command("sweep")
@data_dir_option(must_exist=True)
@click.option("--json", "as_json", is_flag=True)
@_store_errors
def runs_sweep(as_json: bool) -> None:
    """Recover runs whose worker died (stale heartbeat) now, as workers do periodically."""
    from worker.recovery import sweep

    done = sweep()
    if as_json:
        _dump([a.__dict__ for a in done])
        return
    for a in done:
        click.echo(f"run {a.run_id}: {a.action}: {a.message}")
    if not done:
        click.echo("nothing to recover")


@runs_group.command("logs")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--tail", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_store_errors
def runs_logs(run_id: int, tail: int, as_json: bool) -> None:
    """The run's last log lines."""
    from grpo_guard.store import queries

    queries.get_run(run_id)
    lines = queries.log_lines(run_id, tail=tail)
    if as_json:
        _dump([ln.to_dict() for ln in lines])
        return
    for ln in lines:
        click.echo(f"{ln.created_at:%Y-%m-%d %H:%M:%S} #{ln.attempt} {ln.level.upper():7} {ln.message}")


@runs_group.command("delete")
@data_dir_option(must_exist=True)
@click.argument("run_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask.")
@_store_errors
def runs_delete(run_id: int, yes: bool) -> None:
    """Delete a run's rows and artifacts (a running run must be stopped first)."""
    from grpo_guard.store import queries

    if not yes:
        click.confirm(f"delete run {run_id} and its images and checkpoints?", abort=True)
    queries.delete_run(run_id)
    click.echo(f"run {run_id}: deleted")
