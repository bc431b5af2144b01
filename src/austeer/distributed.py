"""Discovery over several processes: shard the pairs, all-reduce the sign counts, select once.

Sign counts are additive (:class:`austeer.momentum.SignCounts`), so N processes can each score a share
of the pairs and sum their counts with one ``all_reduce`` per tensor (``pos``, ``neg``, ``total``,
``squares`` and the pair count ``n``): no object collectives, no pickle.

The batches are the ones :func:`austeer.fit.score` makes (pairs sorted by length, cut into
``batch_size`` chunks); batch ``b`` goes to rank ``b % world``. Every batch is therefore run with the
same composition as in one process, so the integer counts, and with them the selected AUs, equal the
single-process result exactly (the float sums differ only by the order of additions).

Three ways to run it:

- ``austeer fit --nproc N ...``: spawns N local processes (``torch.multiprocessing``, gloo on CPU, one
  GPU each with NCCL when CUDA is there); rank 0 writes the spec.
- ``torchrun --nproc-per-node N -m austeer fit ...`` (or ``accelerate launch``): the same entry point
  sees ``WORLD_SIZE`` / ``RANK`` and joins the launcher's group.
- From Python inside an initialised process group: :func:`score_distributed` / :func:`fit_distributed`.

Example (the plan of batches, no process group needed):
    >>> from austeer.distributed import shard
    >>> shard(list(range(7)), rank=1, world=3)
    [1, 4]
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from austeer.fit import batch_plan, fit, score
from austeer.momentum import SignCounts
from austeer.pairs import Pair
from austeer.spec import SteerSpec

__all__ = ["batch_plan", "score_shard", "score_distributed", "fit_distributed", "shard", "all_reduce_counts"]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Items ``rank, rank + world, rank + 2*world, ...`` (round robin).

    Example:
        >>> shard("abcde", 0, 2)
        ['a', 'c', 'e']
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    return list(items[rank::world])


def score_shard(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    rank: int,
    world: int,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
    share_prefix: bool = True,
) -> dict[str, SignCounts]:
    """The sign counts of this rank's batches only (sum them over ranks to get :func:`austeer.fit.score`)."""
    return score(
        model,
        tokenizer,
        pairs,
        sites,
        batch_size,
        max_length,
        progress,
        share_prefix=share_prefix,
        rank=rank,
        world=world,
    )


def all_reduce_counts(counts: dict[str, SignCounts]) -> dict[str, SignCounts]:
    """Sum every rank's counts (one ``all_reduce`` per tensor); every rank gets the total."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = {}
    for site in sorted(counts):
        c = counts[site]
        tensors = [c.pos, c.neg, c.total, c.squares, torch.tensor([c.n], dtype=torch.int64)]
        summed = []
        for t in tensors:
            buf = t.to(device).clone()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            summed.append(buf.cpu())
        out[site] = SignCounts(summed[0], summed[1], summed[2], summed[3], int(summed[4].item()))
    return out


def score_distributed(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
    share_prefix: bool = True,
) -> dict[str, SignCounts]:
    """Inside an initialised process group: score this rank's share and all-reduce (same on every rank)."""
    if not dist.is_initialized():
        raise RuntimeError("score_distributed needs torch.distributed to be initialised (init_process_group)")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = score_shard(model, tokenizer, pairs, sites, rank, world, batch_size, max_length, progress, share_prefix)
    return all_reduce_counts(local)


def fit_distributed(*args: Any, **kwargs: Any) -> SteerSpec:
    """:func:`austeer.fit.fit` (same arguments) over the current process group; every rank returns the same spec."""
    kwargs.setdefault("progress", False)
    kwargs["scorer"] = score_distributed
    return fit(*args, **kwargs)


# ---------------------------------------------------------------- the `austeer fit` entry point


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` / ``accelerate launch`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the rendezvous of locally spawned processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpu_slice(rank: int, world: int) -> str | None:
    """With ``--device-map``: the GPUs this rank may use (its share of the visible ones), or None."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g for g in visible.split(",") if g] if visible is not None else None
    if ids is None:
        if not torch.cuda.is_available():
            return None
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < world:
        raise ValueError(f"--device-map with --nproc {world} needs at least {world} GPUs, found {len(ids)}")
    per = len(ids) // world
    return ",".join(ids[rank * per : (rank + 1) * per])


def _run_rank(
    rank: int, args: argparse.Namespace, world: int, init_method: str, gpus: Sequence[str | None] = ()
) -> None:
    """One process of ``austeer fit --nproc N`` (also the body of a torchrun process)."""
    if gpus and gpus[rank] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[rank])  # before this process touches CUDA
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpu = n_gpu > 0 and (args.device is None or str(args.device).startswith("cuda"))
    use_nccl = on_gpu and not args.device_map and n_gpu >= world  # NCCL needs one GPU per rank
    if on_gpu and not args.device_map:
        local = int(os.environ.get("LOCAL_RANK", rank)) % n_gpu
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    if not on_gpu:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        _fit_and_save(args, rank, world)
    finally:
        dist.destroy_process_group()


def _fit_and_save(args: argparse.Namespace, rank: int, world: int) -> None:
    from austeer.cli.core import fit_from_args

    spec = fit_from_args(args, rank, world)
    if rank == 0:
        spec.save(args.out, force=bool(getattr(args, "force", False)))
    dist.barrier()


def cmd_fit_multi(args: argparse.Namespace) -> int:
    """``austeer fit`` with ``--nproc N`` (spawns N processes) or under torchrun (joins its group)."""
    if launched_by_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        _run_rank(rank, args, world, "env://")
        if rank != 0:
            return 0
    else:
        import torch.multiprocessing as mp

        world = int(args.nproc)
        if world < 1:
            raise ValueError(f"--nproc must be >= 1, got {world}")
        from austeer.pairs import read_pairs

        read_pairs(args.pairs)  # fail fast, in the parent, on a bad file
        gpus = [_gpu_slice(r, world) for r in range(world)] if args.device_map else []
        init = f"tcp://127.0.0.1:{free_port()}"
        mp.spawn(_run_rank, args=(args, world, init, gpus), nprocs=world, join=True)
    from austeer.spec import load

    spec = load(args.out)
    print(
        f"scored {spec.n_pairs} pairs on site(s) {','.join(spec.sites)} over {world} processes in "
        f"{spec.info.get('seconds', 0):.1f} s; kept {spec.k} AUs -> {args.out}"
    )
    for u in spec.units[: min(10, spec.k)]:
        print(f"  {u.site:8s} layer {u.layer:3d} index {u.index:5d} beta {u.beta:+.3f}")
    return 0
