"""What a training tells as it goes: one Callbacks object passed down, as Keras' `Callback` and Ultralytics' trainer
callbacks are.

Subclass and override the hooks you need (each does nothing by default), or build one from plain functions with
`Callbacks.of(...)`. `fit` calls on_epoch_start, on_batch_end after every step (only where a subclass or a function
asks for it: reading the loss each step costs a device sync) and on_epoch_end with the epoch's history row; a study
(`compare`, `resolution`) calls on_run_start before each run it trains. The same object goes through
`fashionclf.train`, self-training's teacher and student, distillation and every run of a study; on_run_start comes once
the run's folder is held, so a training refused for its folder tells nothing.

Callbacks observe; they do not steer. Early stopping and the per-epoch checkpoint stay in the loop, because a
resumed run must repeat them exactly. A callback that raises (KeyboardInterrupt included) stops the training where
it is, with the last finished epoch's checkpoint kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class Callbacks:
    def on_run_start(self, cfg, run_dir: Path) -> None:
        """A training holds run_dir (locked) and is about to train cfg into it: each run of a study (not the runs it
        reuses), self-training's teacher and student. A training refused for its folder never calls it."""

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        """Epoch `epoch` (from 1) begins; it has n_batches steps on this process."""

    def on_batch_end(self, batch: int, loss: float, accuracy: float) -> None:
        """Step `batch` (from 0) of the epoch is done: its training loss and accuracy."""

    def on_epoch_end(self, row: dict) -> None:
        """The epoch's history row (epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds)."""

    @property
    def wants_batches(self) -> bool:
        """Whether on_batch_end does anything: the loop reads the per-step loss only then."""
        return "on_batch_end" in vars(self) or type(self).on_batch_end is not Callbacks.on_batch_end

    @classmethod
    def of(
        cls,
        on_epoch_end: Callable[[dict], None] | None = None,
        on_batch_end: Callable[[int, float, float], None] | None = None,
        on_epoch_start: Callable[[int, int], None] | None = None,
        on_run_start: Callable | None = None,
    ) -> Callbacks:
        """Callbacks from plain functions, any of them None."""
        cb = cls()
        for name, fn in (
            ("on_epoch_end", on_epoch_end),
            ("on_batch_end", on_batch_end),
            ("on_epoch_start", on_epoch_start),
            ("on_run_start", on_run_start),
        ):
            if fn is not None:
                setattr(cb, name, fn)
        return cb


NONE = Callbacks()  # the default: nothing told
