"""Multi-process training (DDP) started from a Hydra job.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by running the script again with the
command line of rank 0 plus ``hydra.run.dir=<run dir>``. Inside a Hydra multirun that
command line is the whole sweep (``-m`` and every value), and the run dir is not the job's
folder, so each child would start a sweep of its own in other folders (the duplicate
folders and hangs users of DDP + multirun meet). :func:`relaunch_as_this_job` makes the
command line the job's own: the script, the job's overrides and its output folder; and
when the job ends it takes back what Lightning left in rank 0's environment
(``LOCAL_RANK``, ``MASTER_PORT``, ...) and its process group, without which the next job
of the sweep would take itself for an already started rank and wait forever for the others.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch.distributed
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf, open_dict, read_write

# What Lightning's launcher sets in rank 0's environment when it starts the other ranks.
LAUNCH_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_rank_zero() -> bool:
    """True in the process of global rank 0 (as far as the environment tells before a
    Trainer exists: RANK, LOCAL_RANK, SLURM_PROCID...)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def job_command_line() -> list[str] | None:
    """``sys.argv`` that reruns this Hydra job alone, or None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return [sys.argv[0], *hydra_cfg.overrides.task]


@contextlib.contextmanager
def relaunch_as_this_job() -> Iterator[None]:
    """While active, a process Lightning starts for another DDP rank runs this Hydra job
    (same overrides, same output folder), even when the job is one of a multirun.

    Nothing changes in a process that is itself a started rank (LOCAL_RANK set, as by
    Lightning or torchrun) or outside a Hydra app; where the ranks are started by the
    cluster (SLURM tasks), Lightning starts none and the change is unused.
    """
    from hydra.core.hydra_config import HydraConfig

    argv = job_command_line()
    output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir") if argv else None
    if output_dir is None or "LOCAL_RANK" in os.environ:  # (composed, not run, by Hydra)
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_dir = sys.argv, hydra_cfg.run.dir
    saved_env = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    sys.argv = argv
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = saved_dir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
