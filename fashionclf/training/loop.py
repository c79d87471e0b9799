"""The training loop for every registered model: train_one_epoch and fit, with explicit arguments.

The data stay uint8 tensors in memory; each batch is gathered by index, scaled, augmented and
normalised as a whole. Settings come from a TrainConfig (fashionclf.core.config).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.core.config import TrainConfig, config_to_dict
from fashionclf.data.augment import augment_batch, cutmix
from fashionclf.engine import autotune, distributed
from fashionclf.engine import checkpoint as ckpt
from fashionclf.engine.device import agreed, autocast, choose_precision, resolve_device, setup_threads
from fashionclf.engine.inference import evaluate, normalize, to_input, to_unit
from fashionclf.models import build_model, count_params, split_body_head
from fashionclf.training.callbacks import NONE, Callbacks

# Per-rank seeds of a torchrun job: rank r draws dropout masks from seed + r * RANK_SEED_STRIDE and augmentation
# from seed + r * RANK_AUGMENT_STRIDE, so ranks differ from each other and from the next seed's rank 0 (a prime
# stride keeps the augmentation streams apart from the dropout ones). The values are those every run so far used.
RANK_SEED_STRIDE = 1000
RANK_AUGMENT_STRIDE = 7919


def batches_per_epoch(n: int, batch_size: int) -> int:
    # A last batch smaller than 2 is dropped: BatchNorm cannot normalise a single sample.
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_u8: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    on_batch: Callable[[int, float, float], None] | None = None,
    step_schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    frozen: list[nn.Module] = (),
    order: torch.Tensor | None = None,
) -> dict:
    """One pass over x_u8 in a random order (or in `order`: a distributed rank's shard). y: class indices (N,), or
    class probabilities (N, C) float: a teacher's soft labels (fashionclf/training/distill.py), which cross_entropy takes as is."""
    model.train()
    for m in frozen:  # frozen layers keep their pretrained BatchNorm statistics instead of drifting to this batch's
        m.eval()
    perm = torch.randperm(len(x_u8), generator=generator) if order is None else order
    n_batches = batches_per_epoch(len(perm), cfg.batch_size)
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device)
    seen = 0
    for b in range(n_batches):
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        yb = y[idx].to(device, non_blocking=True)
        xb = to_unit(x_u8[idx], device)
        partner, lam = None, 1.0
        if cfg.augment:
            xb = augment_batch(xb, cfg.aug, generator)
            if cfg.aug.cutmix > 0:
                xb, partner, lam = cutmix(xb, cfg.aug.cutmix, generator)
        xb = normalize(xb, cfg.channels_last)
        with autocast(device, amp_dtype):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        if lam < 1:  # the partner's label in proportion to its pixels; training accuracy still counts the own label
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits.float(), yb[partner], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_schedule is not None:
            step_schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        # Accumulate on-device; a .item() per batch would synchronise a GPU every step.
        total_loss += loss.detach() * len(idx)
        total_correct += (logits.argmax(1) == (yb.argmax(1) if yb.is_floating_point() else yb)).sum()
        seen += len(idx)
        if on_batch is not None:
            on_batch(b, total_loss.item() / seen, total_correct.item() / seen)
    return {"train_loss": total_loss.item() / seen, "train_accuracy": total_correct.item() / seen}


EMA_REFERENCE_BATCH = 128


def ema_step_decay(decay: float, batch_size: int) -> float:
    """The per-step decay that gives `decay` per 128 images. A fixed per-step decay would make the average
    reach 4x further back in training at batch 512: measured on an H200, best-cpu at batch 512 with 0.999
    per step kept an average that mixed in early weights and ended at 10-26 % validation accuracy while the
    raw weights trained normally (README, "GPU")."""
    return decay ** (batch_size / EMA_REFERENCE_BATCH)


def param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict]:
    """One group, or body and head groups with their own learning rates for models that have a pretrained body."""
    body, head = split_body_head(model)
    if not body:
        return [{"params": head, "lr": cfg.lr}]
    return [{"params": body, "lr": cfg.lr * cfg.body_lr_mult}, {"params": head, "lr": cfg.lr}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(cfg, model)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: adam, adamw, sgd")


def make_schedules(cfg: TrainConfig, optimizer, total_steps: int):
    """(per-epoch ReduceLROnPlateau or None, per-step scheduler or None)."""
    if cfg.schedule == "plateau":
        if cfg.plateau_patience <= 0:
            return None, None
        # torch counts epochs *beyond* patience; Keras' patience=1 is torch's patience=0.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience - 1), None
    if cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]  # keeps the body/head ratio through the cycle
        return None, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.warmup)
    if cfg.schedule == "cosine":
        return None, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: plateau, onecycle, cosine")


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    train_seconds: float
    best_epoch: int
    params: int
    device: str
    precision: str
    world_size: int = 1
    precision_choice: dict = dataclasses.field(default_factory=dict)  # how precision and channels_last were chosen


def _across_processes(cfg: TrainConfig, trained: nn.Module) -> tuple[nn.Module, TrainConfig]:
    """DDP-wrap the module for a torchrun job; each process takes an equal share of every batch."""
    ws = distributed.world_size()
    if cfg.batch_size % ws:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide by the {ws} processes (each takes an equal share)")
    from torch.nn.parallel import DistributedDataParallel

    # Frozen warm-up epochs leave the body without gradients, which DDP must be told to expect.
    trained = DistributedDataParallel(trained, find_unused_parameters=cfg.freeze_epochs > 0)
    # DDP has copied rank 0's initial weights everywhere; dropout must now draw different masks per rank.
    torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * distributed.rank())
    return trained, dataclasses.replace(cfg, batch_size=cfg.batch_size // ws)


def _norms_of(model: nn.Module, body: list) -> list[nn.Module]:
    """The BatchNorm layers of the pretrained body (kept in eval mode while the body is frozen)."""
    ids = {id(p) for p in body}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(id(p) in ids for p in m.parameters(recurse=False))
    ]


def _ema(cfg: TrainConfig, model: nn.Module):
    """EMA over parameters and BatchNorm buffers (None when off); the averaged copy is what gets validated and kept."""
    if not cfg.ema_decay:
        return None
    avg = torch.optim.swa_utils.get_ema_multi_avg_fn(ema_step_decay(cfg.ema_decay, cfg.batch_size))
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=avg, use_buffers=True)


def _precision(cfg: TrainConfig, model: nn.Module, train_x: torch.Tensor, device: torch.device, recorded: dict | None = None):
    """The training precision and memory format (timed on a few training images under auto), agreed across ranks;
    cfg with the chosen channels_last. The config itself keeps what was asked for. A resumed run takes the
    choice its checkpoint recorded (`recorded`), so it computes exactly as before it was stopped."""
    example = to_input(train_x[: autotune.MEASURE_BATCH], device, channels_last=False)
    asked, cl = (recorded["precision"], recorded["channels_last"]) if recorded else (cfg.precision, cfg.channels_last)
    ws = distributed.world_size()
    # --threads 0 in one process: the thread count is timed too (all cores or half); a resumed run keeps its count.
    timed_threads = not recorded and not cfg.threads and ws == 1 and device.type == "cpu"
    candidates = autotune.thread_candidates(torch.get_num_threads()) if timed_threads else None
    prec = choose_precision(asked, device, model, example, train=True, channels_last=cl, name=cfg.model, threads=candidates)
    prec = agreed(prec, device) if ws > 1 else prec
    threads = prec.threads or (recorded or {}).get("threads")
    if threads and not cfg.threads:  # never more than the CPUs usable now (a run resumed on a smaller machine)
        torch.set_num_threads(min(int(threads), torch.get_num_threads()))
    return prec, dataclasses.replace(cfg, channels_last=prec.channels_last)


@dataclass
class _Setup:
    """What stays fixed through a fit: the module that trains, the per-rank config, the data, the precision."""

    cfg: TrainConfig
    trained: nn.Module
    step_cfg: TrainConfig
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    amp_dtype: torch.dtype | None
    n_batches: int
    body: list
    body_norms: list


def _epoch(s: _Setup, st: ckpt.LoopState, epoch: int, callbacks: Callbacks) -> dict:
    """One epoch of training and validation; returns its history row and updates the best-so-far and early stopping."""
    cfg, (train_x, train_y, val_x, val_y), t0 = s.cfg, s.data, time.perf_counter()
    for p in s.body:  # frozen warm-up: a random head first learns from stable pretrained features
        p.requires_grad_(epoch > cfg.freeze_epochs)
    callbacks.on_epoch_start(epoch, s.n_batches)
    on_batch = callbacks.on_batch_end if callbacks.wants_batches else None
    frozen = s.body_norms if epoch <= cfg.freeze_epochs else []
    ws = distributed.world_size()
    order = distributed.shard(len(train_x), cfg.seed, epoch) if ws > 1 else None
    args = (st.optimizer, train_x, train_y, s.step_cfg, st.generator, st.device, s.amp_dtype, on_batch, st.step_schedule, st.ema)
    stats = train_one_epoch(s.trained, *args, frozen, order)
    if ws > 1:
        stats = distributed.mean_over_ranks(stats, st.device)
        distributed.sync_buffers(st.model, st.scored)
    if len(val_x):
        val = evaluate(st.scored, val_x, val_y, device=st.device, amp_dtype=s.amp_dtype, channels_last=cfg.channels_last, tta=cfg.tta)
        val = distributed.from_main(val, st.device)  # one early-stopping decision on every rank
    else:  # no validation split (cross-validation folds): the schedule runs to its end, the last weights are kept
        val = {"loss": math.nan, "accuracy": math.nan}
    row = {
        "epoch": epoch,
        **stats,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "lr": st.optimizer.param_groups[-1]["lr"],  # the head's, where body and head differ
        "seconds": time.perf_counter() - t0,
    }
    st.history.append(row)
    if st.plateau is not None and len(val_x):
        st.plateau.step(val["loss"])
    if val["loss"] < st.best_loss:
        st.best_loss, st.best_epoch, st.best_state = val["loss"], epoch, copy.deepcopy(st.scored.state_dict())
    elif cfg.early_stopping and len(val_x) and epoch - st.best_epoch >= cfg.early_stopping:
        st.stopped = True
    st.epoch = epoch
    return row


def fit(
    cfg: TrainConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int = 10,
    callbacks: Callbacks = NONE,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_extra: dict | None = None,
) -> FitResult:
    """Train cfg.model from scratch; early stopping on val loss restores the best weights.

    callbacks: what the training tells as it goes (engine/callbacks.py).
    checkpoint: a folder where the loop's whole state is saved after every epoch (engine/checkpoint.py);
    resume=True first continues from what it holds: for a fixed seed, the same weights as an uninterrupted
    run. checkpoint_extra: what the caller records with it (its data, to resume on the same).
    """
    asked = config_to_dict(cfg)
    setup_threads(cfg.threads)
    cores = torch.get_num_threads()  # the timed count applies to this fit only; restored on return
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, num_classes).to(device)
    saved = ckpt.read_state(checkpoint) if resume else None
    prec, cfg = _precision(cfg, model, train_x, device, saved and saved.get("precision"))  # measured under auto (autotune.py)
    amp_dtype, model = prec.dtype, model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    # The compiled (and, across processes, DDP-wrapped) module shares the parameters; the plain one is what
    # gets validated, averaged and saved.
    trained = torch.compile(model) if cfg.compile else model
    ws = distributed.world_size()
    trained, step_cfg = _across_processes(cfg, trained) if ws > 1 else (trained, cfg)
    optimizer = make_optimizer(cfg, model)
    # Across processes, each rank draws its own augmentation; the epoch's order comes from distributed.shard.
    generator = torch.Generator().manual_seed(cfg.seed + RANK_AUGMENT_STRIDE * distributed.rank())
    if device.type == "cuda":  # the whole dataset fits on any GPU: copy once, gather batches there
        train_x, train_y = train_x.to(device), train_y.to(device)
    n_batches = batches_per_epoch(len(train_x) // ws, step_cfg.batch_size)
    plateau, step_schedule = make_schedules(cfg, optimizer, n_batches * cfg.epochs)
    st = ckpt.LoopState(model, optimizer, plateau, step_schedule, _ema(cfg, model), generator, device, precision=prec.record())
    if resume:
        ckpt.restore(checkpoint, st, asked)
    body, _ = split_body_head(model)
    s = _Setup(cfg, trained, step_cfg, (train_x, train_y, val_x, val_y), amp_dtype, n_batches, body, _norms_of(model, body))
    start = time.perf_counter() - st.elapsed
    for epoch in range(st.epoch + 1, cfg.epochs + 1):
        if st.stopped:
            break
        row = _epoch(s, st, epoch, callbacks)
        st.elapsed = time.perf_counter() - start
        if checkpoint is not None:  # before the callback: a run stopped there resumes after this epoch
            ckpt.save(checkpoint, st, asked, checkpoint_extra)
        callbacks.on_epoch_end(row)
    train_seconds = time.perf_counter() - start
    scored = st.scored
    if st.best_state is not None:
        scored.load_state_dict(st.best_state)
    scored.eval()
    best_epoch = st.best_epoch or len(st.history)  # without validation, the last epoch is the one kept
    torch.set_num_threads(cores)
    return FitResult(scored, st.history, train_seconds, best_epoch, count_params(model), str(device), prec.name, ws, st.precision)
