"""Which machines one ``grpo-guard train`` spans: ``--nnodes``, ``--node-rank`` and ``--master``,
or, under Slurm, the ``SLURM_*`` variables of the job step (explicit flags win).

Nothing here starts a process: :func:`resolve_nodes` gives a :class:`NodePlan`, and the train
command hands it to accelerate's own multi-node launcher
(:func:`grpo_guard.training.distributed.launch_module_command`). Kept free of torch so it is
cheap to test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MASTER_PORT = 29500  # torchrun's and accelerate's own default


class NodeError(ValueError):
    """A node setting that cannot start a run; the message is one sentence."""


@dataclass(frozen=True)
class NodePlan:
    """This machine's place in a run: ``nnodes`` machines, this one is ``node_rank``, and every
    node meets node 0 at ``master_addr:master_port`` (None on a single node unless given)."""

    nnodes: int
    node_rank: int
    master_addr: str | None
    master_port: int | None
    source: str  # "slurm" when any value came from the Slurm variables, else "flags"


def parse_master(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address) -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text.strip())
    if not m:
        raise NodeError(f"--master must be HOST:PORT (the address of node 0 and a free port there), got {text!r}.")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise NodeError(f"the port of --master must be between 1 and 65535, got {port}.")
    return host, int(port)


def expand_hostlist(spec: str) -> list[str]:
    """Slurm's compact host list (``gpu[01-03,07],login1``, ``rack[1-2]-n[1-2]``) as host names,
    in Slurm's order; zero padding of a range is kept (``[08-10]`` -> 08, 09, 10)."""
    hosts: list[str] = []
    for part in _split_top_level(spec):
        hosts.extend(_expand_one(part))
    return hosts


def _split_top_level(spec: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in spec.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise NodeError(f"the Slurm node list {spec!r} has an unmatched ']'.")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise NodeError(f"the Slurm node list {spec!r} has an unmatched '['.")
    parts.append(cur)
    return [p for p in (p.strip() for p in parts) if p]


def _expand_one(pattern: str) -> list[str]:
    start = pattern.find("[")
    if start < 0:
        return [pattern]
    end = pattern.index("]", start)
    head, body, rest = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    values: list[str] = []
    for item in body.split(","):
        lo, _, hi = item.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise NodeError(f"the Slurm node list range [{body}] is not numbers and ranges like 01-03,07.")
        if not hi:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise NodeError(f"the Slurm node list range {item} runs backwards.")
        values.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return [head + v + tail for v in values for tail in _expand_one(rest)]


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``scontrol show hostnames`` where Slurm's tools are
    installed (it knows every form Slurm writes), else :func:`expand_hostlist`."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = expand_hostlist(nodelist)
    if not hosts:
        raise NodeError("the Slurm node list (SLURM_JOB_NODELIST) is empty.")
    return hosts[0]


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise NodeError(f"{name} must be a whole number, got {env[name]!r}.") from None


def in_slurm(env: Mapping[str, str]) -> bool:
    """A Slurm job step that says how many nodes it has (``SLURM_JOB_ID`` and ``SLURM_NNODES``)."""
    return bool(env.get("SLURM_JOB_ID")) and bool(env.get("SLURM_NNODES"))


def resolve_nodes(config_num_nodes: int, config_sets_num_nodes: bool, nnodes: int | None = None,
                  node_rank: int | None = None, master: str | None = None,
                  env: Mapping[str, str] | None = None) -> NodePlan:
    """The node plan of one ``grpo-guard train`` from its flags, else Slurm, else the config.

    The number of nodes is ``--nnodes``, else ``SLURM_NNODES``, else the config's ``num_nodes``;
    when the config sets ``num_nodes`` (in the file or with ``--set``) the two must agree, and
    when it does not, the launch sets it. The node rank is ``--node-rank``, else ``SLURM_NODEID``,
    else 0. The master is ``--master``, else (Slurm) ``MASTER_ADDR`` or the first host of
    ``SLURM_JOB_NODELIST`` with ``MASTER_PORT`` or 29500. Raises :class:`NodeError`."""
    env = os.environ if env is None else env
    slurm = in_slurm(env)
    used_slurm = False
    if nnodes is None and slurm:
        nnodes, used_slurm = _int_env(env, "SLURM_NNODES"), True
    if nnodes is None:
        nnodes = config_num_nodes
    if nnodes < 1:
        raise NodeError(f"--nnodes must be at least 1, got {nnodes}.")
    if config_sets_num_nodes and nnodes != config_num_nodes:
        where = "SLURM_NNODES" if used_slurm else "--nnodes"
        raise NodeError(f"the config says num_nodes: {config_num_nodes} but {where} is {nnodes}; make them equal "
                        "(or leave num_nodes out of the config and let the launch set it).")
    if node_rank is None and slurm and env.get("SLURM_NODEID"):
        node_rank, used_slurm = _int_env(env, "SLURM_NODEID"), True
    node_rank = 0 if node_rank is None else node_rank
    if not 0 <= node_rank < nnodes:
        raise NodeError(f"--node-rank must be between 0 and {nnodes - 1} for {nnodes} node(s), got {node_rank}.")
    addr: str | None = None
    port: int | None = None
    if master is not None:
        addr, port = parse_master(master)
    elif slurm and nnodes > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")  # the latter: older Slurm
        addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else None)
        if addr:
            port_text = env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT)
            addr, port = parse_master(f"{addr}:{port_text}" if ":" not in addr else f"[{addr}]:{port_text}")
            used_slurm = True
    if nnodes > 1 and addr is None:
        raise NodeError(f"a run on {nnodes} nodes needs --master HOST:PORT, the address of node 0 and a free port "
                        "there (under Slurm it is read from SLURM_JOB_NODELIST).")
    return NodePlan(nnodes, node_rank, addr, port, "slurm" if used_slurm else "flags")
