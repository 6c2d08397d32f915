"""Data parallelism for the recipe's training loops: every rank draws the same batch, takes its share, and the
gradients are averaged (gloo), so the ranks take identical steps. No process group: one rank, nothing changes."""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the data-parallel group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: list[int]) -> list[int]:
    """This rank's share of a batch (every rank draws the same batch from the same seeded generator)."""
    rank, world = rank_and_world()
    return indices[rank::world]


def average_gradients(params: list) -> None:
    """All-reduce (mean) the gradients of ``params`` over the ranks; the ranks then take identical steps."""
    rank, world = rank_and_world()
    if world == 1:
        return
    import torch.distributed as dist

    has_grad = torch.tensor([float(p.grad is not None) for p in params])
    dist.all_reduce(has_grad)  # a parameter no rank used keeps grad None (AdamW then skips it, as with one rank)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g, used in zip(params, grads, has_grad.tolist()):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if used else None
        offset += n


def broadcast_from_rank0(*modules) -> None:
    """Make every rank hold rank 0's parameters and buffers (after a stage every rank ran on its own)."""
    rank, world = rank_and_world()
    if world == 1:
        return
    import torch.distributed as dist

    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            data = tensor.data
            dist.broadcast(data, 0)


def quiet_rank() -> bool:
    return rank_and_world()[0] != 0
