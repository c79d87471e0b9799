"""Data-parallel training across processes with PyTorch's own engine (torchrun + DistributedDataParallel).

`torchrun --standalone --nproc_per_node=N -m fashionclf train ...` starts N copies of the CLI with
RANK, WORLD_SIZE and the rendezvous address in their environment; `init_from_env` joins them into one
process group (gloo on CPU, NCCL on CUDA). Without those variables everything here is a no-op and
training is the plain single process.

Semantics, the same on every rank (fashionclf.training.loop.fit):
- the global batch is the configured batch size: each rank takes batch_size / world_size of it;
- every epoch draws one permutation from (seed, epoch), identical on all ranks, and rank r takes
  every world_size-th image of it from position r (a shard; the few images that do not divide
  evenly are left out of that epoch, so every rank runs the same number of steps);
- gradients are averaged by DDP; BatchNorm statistics and validation scores are taken from rank 0 and
  broadcast, so early stopping and best-epoch choice are the same decision everywhere;
- only rank 0 scores the test set and writes the run folder, which records the world size.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """The world size torchrun (or another launcher) announced; 1 when started as a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "auto") -> bool:
    """Join the process group the environment describes; False (and nothing done) for a single process."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; use --device cuda")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Rank 0 scores the test set and writes the run while the others wait at the final barrier: allow it time.
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return True


def shutdown(ok: bool = True) -> None:
    """Leave the group. After success all ranks leave together: a rank that tore down its connections
    while rank 0 was still scoring and saving made gloo abort (SIGABRT), and torchrun then killed rank 0
    mid-write. After an error no barrier: the other ranks are stuck elsewhere and it would only hang."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def shard(n: int, seed: int, epoch: int) -> torch.Tensor:
    """This rank's indices for one epoch: a permutation shared by all ranks, every world_size-th element."""
    ws, r = world_size(), rank()
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // ws
    return perm[: per_rank * ws][r::ws]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Per-rank averages over equal-sized shards -> global averages."""
    if not active():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / world_size()).tolist()))


def from_main(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Rank 0's values on every rank: one decision everywhere, whatever floating-point noise."""
    if not active():
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return dict(zip(values, t.tolist()))


def sync_buffers(*modules: torch.nn.Module) -> None:
    """BatchNorm running statistics (and other buffers) from rank 0, so every rank validates the same model."""
    if not active():
        return
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b.data, 0)
