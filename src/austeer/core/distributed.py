"""Discovery over several processes: shard the pairs, all-reduce the sign counts, select once.

Sign counts are additive (:class:`austeer.core.momentum.SignCounts`), so N processes can each score a share
of the pairs and sum their counts with one ``all_reduce`` per tensor (``pos``, ``neg``, ``total``,
``squares`` and the pair count ``n``): no object collectives, no pickle.

The batches are the ones :func:`austeer.core.fit.score` makes (pairs sorted by length, cut into
``batch_size`` chunks); batch ``b`` goes to rank ``b % world``. Every batch is therefore run with the
same composition as in one process, so the integer counts, and with them the selected AUs, equal the
single-process result exactly (the float sums differ only by the order of additions).

Three ways to run it:

- ``austeer fit --nproc N ...``: spawns N local processes (``torch.multiprocessing``, gloo on CPU, one
  GPU each with NCCL when CUDA is there); rank 0 writes the spec. The launching lives in
  :mod:`austeer.cli.distributed`: this module never sees command-line arguments.
- ``torchrun --nproc-per-node N -m austeer fit ...`` (or ``accelerate launch``): the same entry point
  sees ``WORLD_SIZE`` / ``RANK`` and joins the launcher's group.
- From Python inside an initialised process group: :func:`score_distributed` / :func:`fit_distributed`.

Example (the plan of batches, no process group needed):
    >>> from austeer.core.distributed import shard
    >>> shard(list(range(7)), rank=1, world=3)
    [1, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from austeer.core.collect import batch_plan
from austeer.core.fit import fit, score
from austeer.core.momentum import SignCounts
from austeer.core.pairs import Pair
from austeer.core.spec import SteerSpec
from austeer.errors import UserError

__all__ = ["batch_plan", "score_shard", "score_distributed", "fit_distributed", "shard", "all_reduce_counts"]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Items ``rank, rank + world, rank + 2*world, ...`` (round robin).

    Example:
        >>> shard("abcde", 0, 2)
        ['a', 'c', 'e']
    """
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"need 0 <= rank < world, got rank {rank}, world {world}")
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
    """The sign counts of this rank's batches only (sum them over ranks to get :func:`austeer.core.fit.score`)."""
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
    """:func:`austeer.core.fit.fit` (same arguments) over the current process group; every rank returns the same
    spec."""
    kwargs.setdefault("progress", False)
    kwargs["scorer"] = score_distributed
    return fit(*args, **kwargs)
