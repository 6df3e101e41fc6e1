"""``grpo-guard train`` and ``grpo-guard sample``: the trainer in the foreground, and one image from
a base model or a checkpoint. Imported only when one of these commands runs (it loads torch)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from grpo_guard import metrics as M

if TYPE_CHECKING:
    from grpo_guard.cli.nodes import NodePlan

STOP_FILE_ENV = "GG_STOP_FILE"


class _SignalControl:
    """Ctrl-C once: stop cleanly at the next epoch boundary (with a checkpoint); twice: abort.
    A rank of a multi-GPU run also stops when the launching ``grpo-guard train`` creates the
    file named by GG_STOP_FILE (the ranks run in their own session, out of the terminal's reach)."""

    def __init__(self) -> None:
        self.stop = False
        self.stop_file = os.environ.get(STOP_FILE_ENV) or None
        self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.stop:
            signal.signal(signal.SIGINT, self._old)
            raise KeyboardInterrupt
        self.stop = True
        click.echo("\nstopping after this epoch (Ctrl-C again to abort without a checkpoint)", err=True)

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._old)

    def stop_requested(self) -> bool:
        if self.stop_file and os.path.exists(self.stop_file):
            self.stop = True
        return self.stop

    def take_sample_now(self) -> bool:
        return False

    def take_save_now(self) -> bool:
        return False


# (metric key, label on the bar, format) of the values the progress bar shows.
_BAR_KEYS = ((M.REWARD_TOTAL_MEAN, "reward", ".4f"), (M.RATIO_MEAN_MINUS_1, "r-1", ".1e"),
             (M.RATIO_STD, "r_std", ".1e"), (M.RATIO_CLIP_FRAC, "clip", ".2f"),
             (M.EVAL_PROXY, "eval_proxy", ".4f"), (M.EVAL_GOLD, "eval_gold", ".4f"))


class _ProgressRecorder:
    """Forwards to a recorder and drives a tqdm bar: epoch, reward, ratio statistics, ETA."""

    def __init__(self, inner: Any, total: int) -> None:
        from tqdm import tqdm

        self.inner = inner
        self.bar = tqdm(total=total, unit="epoch", dynamic_ncols=True, file=sys.stderr)
        self.post: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.inner.log_scalars(step, values)
        for key, short, fmt in _BAR_KEYS:
            if key in values:
                self.post[short] = format(values[key], fmt)
        self.bar.set_postfix(self.post, refresh=False)

    def set_progress(self, step: int, total: int) -> None:
        self.inner.set_progress(step, total)
        self.bar.total = total
        self.bar.n = step
        self.bar.refresh()

    def log_line(self, message: str, level: str = "info") -> None:
        self.inner.log_line(message, level)
        if level in ("info", "warning", "error"):
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--epochs", type=int, default=None, help="Override the number of epochs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory (scalars, samples, checkpoints). Default: runs/<timestamp>.")
@click.option("--resume", "resume", type=click.Path(), default=None,
              help="Checkpoint (ckpt_*.pt) or checkpoint directory to continue from.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--gpus", "gpu_ids", default=None, metavar="0,1",
              help="With num_gpus > 1: which GPUs (default: the first num_gpus of CUDA_VISIBLE_DEVICES, else 0..N-1).")
@click.option("--nnodes", type=int, default=None,
              help="Machines this run spans (each runs this command with its own --node-rank); sets the config's "
                   "num_nodes, or must equal it when the config sets it. Default: SLURM_NNODES under Slurm, else num_nodes.")
@click.option("--node-rank", "node_rank", type=int, default=None,
              help="This machine's place, 0..nnodes-1 (node 0 holds rank 0, which alone writes). Default: SLURM_NODEID, else 0.")
@click.option("--master", default=None, metavar="HOST:PORT",
              help="Address of node 0 and a free port there, the same on every node. Default under Slurm: the "
                   "first host of SLURM_JOB_NODELIST and MASTER_PORT (else 29500).")
@click.option("--dry-run", "dry_run", is_flag=True, help="Print the command this node would run, and exit.")
def train_cmd(config_path: str, overrides: tuple[str, ...], epochs: int | None, out_dir: str | None,
              resume: str | None, device: str | None, gpu_ids: str | None, nnodes: int | None,
              node_rank: int | None, master: str | None, dry_run: bool) -> None:
    """Train CONFIG.yaml in the foreground with a progress bar; Ctrl-C stops cleanly with a checkpoint.

    With num_gpus > 1 or several nodes it starts itself under ``accelerate launch`` (one process
    per GPU, data parallel over prompt groups; on several nodes accelerate's multi-node launch,
    one command per node); inside a launched group it is one rank and only rank 0 writes."""
    from grpo_guard.config import RunConfig
    from grpo_guard.training.distributed import in_launched_group

    items = list(overrides) + ([f"epochs={epochs}"] if epochs is not None else [])
    config = RunConfig.from_file(config_path, items)
    if out_dir is None:
        out_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    launched = in_launched_group()
    if not launched:
        from grpo_guard.cli.nodes import NodeError, resolve_nodes

        try:
            plan = resolve_nodes(config.num_nodes, "num_nodes" in config.fields_set(), nnodes, node_rank, master)
        except NodeError as e:
            raise click.UsageError(str(e)) from None
        if plan.nnodes != config.num_nodes:  # the launch sets num_nodes; the ranks read it from --set
            items.append(f"num_nodes={plan.nnodes}")
            config = RunConfig.from_file(config_path, items)
        if config.world_size() > 1:
            _launch_ranks(config_path, config.num_gpus, items, out_dir, resume, gpu_ids, plan, dry_run)
            return
        if dry_run:
            from grpo_guard.training.distributed import build_launch_command

            click.echo(shlex.join(build_launch_command(config_path, 1, [0], overrides=items,
                                                       extra_args=_rank_args(out_dir, resume, device))))
            return
    rank = int(os.environ.get("RANK", "0") or 0) if in_launched_group() else 0
    from grpo_guard.models.base import ModelNotFoundError
    from grpo_guard.training.checkpoint import CheckpointError
    from grpo_guard.training.recording import FolderRecorder
    from grpo_guard.training.trainer import train

    control = _SignalControl()
    if rank != 0:  # another rank of a multi-GPU run: rank 0 alone writes the run directory
        from grpo_guard.training.recording import NullRecorder

        recorder: Any = NullRecorder()
        recorder.close = lambda: None
    else:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w", encoding="utf-8") as fh:
            fh.write(config.to_yaml())
        recorder = _ProgressRecorder(FolderRecorder(out_dir), config.epochs)
        click.echo(f"run directory: {out_dir}", err=True)
    try:
        result = train(config, recorder, control, resume_from=resume, device=device)
    except (CheckpointError, ModelNotFoundError) as e:
        recorder.close()
        raise click.ClickException(str(e)) from None
    except KeyError as e:  # an unknown reward name
        recorder.close()
        raise click.ClickException(str(e.args[0] if e.args else e)) from None
    finally:
        control.restore()
    recorder.close()
    if in_launched_group():
        from grpo_guard.training.distributed import shutdown

        shutdown()
    if rank == 0:
        click.echo(f"{result.status} after {result.step} epochs; last checkpoint: {result.last_checkpoint}")


def _rank_args(out_dir: str, resume: str | None, device: str | None) -> list[str]:
    return ["--out", out_dir] + (["--resume", resume] if resume else []) + (["--device", device] if device else [])


def _launch_ranks(config_path: str, num_gpus: int, items: list[str], out_dir: str, resume: str | None,
                  gpu_ids: str | None, plan: NodePlan, dry_run: bool = False) -> None:
    """Run this same command under ``accelerate launch`` with this node's ``num_gpus`` processes
    (``plan``: the :class:`~grpo_guard.cli.nodes.NodePlan`; several nodes use accelerate's own
    multi-node launch, each node with its own machine rank) and wait.

    The ranks get their own session, so a terminal Ctrl-C reaches only this process: the first
    creates the stop file (rank 0 sees it at the next epoch, checkpoints, and the group stops
    together), the second terminates the ranks. Only node 0 touches the run directory; another
    node's stop file is private to it, so there the first Ctrl-C says to stop from node 0."""
    import subprocess
    import tempfile

    from grpo_guard.training.distributed import free_port, launch_module_command, parse_gpu_ids

    spec = gpu_ids or os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids: list[int | str] = list(parse_gpu_ids(spec)[:num_gpus]) if spec else list(range(num_gpus))
    try:
        import torch

        have = torch.cuda.device_count()
    except Exception:
        have = 0
    if have and have < num_gpus:
        raise click.ClickException(f"num_gpus is {num_gpus} but only {have} GPU(s) are visible; lower num_gpus "
                                   "or set CUDA_VISIBLE_DEVICES / --gpus")
    module_args = ["grpo_guard.cli", "train", str(config_path)]
    for item in items:
        module_args += ["--set", item]
    module_args += _rank_args(out_dir, resume, None)
    port = plan.master_port if plan.master_port is not None else (None if dry_run else free_port())
    try:
        cmd = launch_module_command(module_args, num_gpus, ids, main_process_port=port, num_nodes=plan.nnodes,
                                    node_rank=plan.node_rank, main_process_ip=plan.master_addr)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        click.echo(shlex.join(cmd))
        return
    main_node = plan.node_rank == 0
    if main_node:
        os.makedirs(out_dir, exist_ok=True)
        stop_file = os.path.join(out_dir, ".stop-requested")
    else:
        stop_file = os.path.join(tempfile.mkdtemp(prefix="grpo-guard-node-"), ".stop-requested")
    if os.path.exists(stop_file):
        os.remove(stop_file)
    where = f" on node {plan.node_rank} of {plan.nnodes}" + (" (from Slurm)" if plan.source == "slurm" else "")
    click.echo(f"launching {num_gpus} ranks" + (where if plan.nnodes > 1 else "")
               + ("" if have else " on CPU (gloo; no GPU here)") + ": " + " ".join(cmd), err=True)
    proc = subprocess.Popen(cmd, env={**os.environ, STOP_FILE_ENV: os.path.abspath(stop_file)}, start_new_session=True)
    presses = 0

    def on_sigint(signum, frame) -> None:
        nonlocal presses
        presses += 1
        if presses == 1 and main_node:
            open(stop_file, "w").close()
            click.echo("\nstopping after this epoch (Ctrl-C again to abort without a checkpoint)", err=True)
        elif presses == 1:
            click.echo("\nrank 0 decides when the run stops: press Ctrl-C on node 0 for a clean stop "
                       "(Ctrl-C again here aborts this node, and the whole run fails)", err=True)
        else:
            os.killpg(proc.pid, signal.SIGTERM)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
        if os.path.exists(stop_file):
            os.remove(stop_file)
        if not main_node:
            os.rmdir(os.path.dirname(stop_file))
    if rc:
        sys.exit(rc)


@click.command("sample")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Run config (backbone, model, resolution, CFG, eval steps).")
@click.option("--backbone", type=click.Choice(["toy", "sd3", "flux"]), default=None,
              help="Without --config: a default config for this backbone (toy: the shipped base model).")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Checkpoint to sample from (see --weights); its config is used when --config is absent.")
@click.option("--prompt", required=True, help="The prompt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--steps", type=int, default=None, help="ODE steps (default: the config's eval_num_steps).")
@click.option("--weights", type=click.Choice(["auto", "ema", "raw"]), default="auto", show_default=True,
              help="With --checkpoint: its EMA weights, its raw weights, or auto (the EMA when the run kept one).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output PNG file.")
@click.option("--device", default=None, help="torch device.")
def sample_cmd(config_path: str | None, backbone: str | None, checkpoint: str | None, prompt: str, seed: int,
               steps: int | None, weights: str, out_path: str, device: str | None) -> None:
    """Write one image (deterministic ODE sampling, as in evaluation) for PROMPT and SEED."""
    from grpo_guard.config import RunConfig
    from grpo_guard.models.base import ModelNotFoundError
    from grpo_guard.training.checkpoint import CheckpointError, apply_checkpoint, load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint) if checkpoint else None
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    if config_path:
        config = RunConfig.from_file(config_path)
    elif ckpt is not None:
        config = ckpt.config
    elif backbone:
        config = RunConfig.from_dict({"backbone": backbone})
    else:
        raise click.UsageError("give --config, --backbone or --checkpoint")

    from grpo_guard.models import build_backbone
    from grpo_guard.training.evaluation import png_bytes
    from grpo_guard.training.rollout import sample_ode, seed_noise

    try:
        bb = build_backbone(config, device=device)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if ckpt is not None:
        try:
            apply_checkpoint(bb, ckpt, weights)
        except ValueError as e:
            raise click.ClickException(f"checkpoint {ckpt.path} does not fit this model: {e}") from None
        except CheckpointError as e:
            raise click.ClickException(str(e)) from None
    sigmas = bb.sigmas(steps or config.eval_num_steps, config.shift, config.resolution)
    noise = seed_noise([seed], bb.latent_shape(config.resolution))
    image = bb.decode(sample_ode(bb, [prompt], noise, sigmas, cfg_scale=config.cfg_scale))[0]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as fh:
        fh.write(png_bytes(image))
    click.echo(out_path)
