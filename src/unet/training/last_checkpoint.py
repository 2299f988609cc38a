"""``checkpoints/last.ckpt``: where training is now, to resume from (``ckpt_path=last``).

Lightning's ``ModelCheckpoint(save_last=True)`` beside a monitored metric writes
``last.ckpt`` only when it also writes a best checkpoint, so a run whose last epoch was not
its best left a ``last.ckpt`` of an earlier epoch, and resuming trained those epochs again.
:class:`LastCheckpoint` writes it on its own schedule:

- at the end of every training epoch (after that epoch's validation);
- during an epoch, every ``every_n_train_steps`` optimizer steps and/or every
  ``every_minutes`` minutes: a job killed mid-epoch loses at most that much. The training
  loader (:class:`unet.data.samples.ResumableLoader`) records how far into the epoch it
  was, so the resumed run trains on the rest of the epoch's tiles in their order;
- when the process is asked to stop (SIGTERM from a scheduler, Ctrl-C): at the end of the
  step in progress it writes ``last.ckpt`` and raises :class:`unet.errors.Interrupted`,
  which the entry point turns into one line and exit code 128 + signal (143, 130).

The file is written through the trainer's checkpoint IO (``unet.training.checkpoint_io``:
temporary file and rename), with everything the LightningModule adds (``net_config``, ...).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from unet.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LastCheckpoint(Checkpoint):
    """Keep ``<dirpath>/last.ckpt`` at the last completed epoch or step (module docstring).

    Args:
        dirpath: the checkpoint folder.
        every_n_train_steps: also write it every this many optimizer steps within an epoch
            (None: not by steps).
        every_minutes: also write it when this many minutes passed since the last write
            (None: not by time).
    """

    FILENAME = "last.ckpt"

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int | None = None,
        every_minutes: float | None = 10.0,
    ):
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps={every_n_train_steps}: expected >= 1 or None")
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"every_minutes={every_minutes}: expected > 0 or None")
        self.path = Path(dirpath) / self.FILENAME
        self.every_n_train_steps, self.every_minutes = every_n_train_steps, every_minutes
        self._saved_at, self._saved_step = time.monotonic(), -1
        self._signum: int | None = None
        self._previous: dict[int, object] = {}

    # -- signals: caught from the start of the training loop to its end ----------------------

    def on_train_start(self, trainer: Trainer, pl_module) -> None:
        # After Lightning installed its own SIGTERM handler (which would only stop after the
        # epoch, with exit code 0): ours replaces it; Lightning restores the original ones.
        self._signum = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if self._signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self._signum = signum

    def teardown(self, trainer: Trainer, pl_module, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    # -- writing --------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._skip(trainer) or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's end writes it, after validation
        due, stop = self._agree(trainer, self._due(trainer), self._signum is not None)
        if due or stop:
            self._save(trainer)
        if stop:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module) -> None:
        if self._skip(trainer):
            return
        self._save(trainer)
        if self._agree(trainer, False, self._signum is not None)[1]:
            self._stop(trainer)

    def _skip(self, trainer: Trainer) -> bool:
        return bool(
            trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING
        )

    def _due(self, trainer: Trainer) -> bool:
        step = trainer.global_step
        if step == self._saved_step:  # (gradient accumulation: several batches per step)
            return False
        by_steps = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        by_time = self.every_minutes is not None and (
            time.monotonic() - self._saved_at >= 60 * self.every_minutes
        )
        return by_steps or by_time

    @staticmethod
    def _agree(trainer: Trainer, due: bool, stop: bool) -> tuple[bool, bool]:
        """The decisions of any rank (a clock or a signal can differ between DDP ranks, and
        writing a checkpoint takes every rank)."""
        if trainer.world_size == 1:
            return due, stop
        flags = torch.tensor([float(due), float(stop)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _save(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_at, self._saved_step = time.monotonic(), trainer.global_step

    def _stop(self, trainer: Trainer) -> None:
        name = signal.Signals(self._signum).name if self._signum else "another rank's signal"
        run = self.path.parent.parent
        raise Interrupted(
            f"stopped by {name} at epoch {trainer.current_epoch + 1}, step {trainer.global_step}; "
            f"saved {self.path}; to continue: python src/train.py ckpt_path=last "
            f"hydra.run.dir={run} (with the run's other settings)",
            exit_code=128 + (self._signum or signal.SIGTERM),
        )
