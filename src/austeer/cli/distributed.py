"""Process launching for ``austeer fit --nproc N`` and for ``torchrun``: spawn or join a process group,
fit with :func:`austeer.core.distributed.fit_distributed`, write the spec from rank 0.

The library side (sharding, the all-reduce of the sign counts) is :mod:`austeer.core.distributed`; this module
is the only place that hands command-line arguments to processes.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence

import torch
import torch.distributed as dist

from austeer.cli.common import fit_from_args
from austeer.errors import UserError


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
        raise UserError(f"--device-map with --nproc {world} needs at least {world} GPUs, found {len(ids)}")
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
            raise UserError(f"--nproc must be >= 1, got {world}")
        from austeer.core.pairs import read_pairs

        read_pairs(args.pairs)  # fail fast, in the parent, on a bad file
        gpus = [_gpu_slice(r, world) for r in range(world)] if args.device_map else []
        init = f"tcp://127.0.0.1:{free_port()}"
        mp.spawn(_run_rank, args=(args, world, init, gpus), nprocs=world, join=True)
    from austeer.core.spec import load

    spec = load(args.out)
    print(
        f"scored {spec.n_pairs} pairs on site(s) {','.join(spec.sites)} over {world} processes in "
        f"{spec.info.get('seconds', 0):.1f} s; kept {spec.k} AUs -> {args.out}"
    )
    for u in spec.units[: min(10, spec.k)]:
        print(f"  {u.site:8s} layer {u.layer:3d} index {u.index:5d} beta {u.beta:+.3f}")
    return 0
