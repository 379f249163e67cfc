"""Several processes (``torchrun --nproc_per_node N``), one training.

``medtransfer train`` runs unchanged under torchrun: each process reads the data, builds the
same network from the same seed, and draws its own random batches (seed + rank — for sampling
with replacement this is what ``DistributedSampler`` gives a finite dataset: disjoint streams).
After every backward pass the gradients are averaged over the processes, and after every step
the BatchNorm running statistics too, so every process holds the same model; only rank 0 logs,
locks the run folder and writes checkpoints and the package. The effective batch is N × the
batch size (the learning rate is not scaled).

Why an explicit all-reduce rather than wrapping the model in ``DistributedDataParallel``: DDP
registers the parameters that require gradients when it is built, and MedTransfer's strategies
change that during the run (gradual unfreezing, frozen stages); averaging the gradients that
exist at each step is correct for every strategy. BatchNorm layers normalise with their own
process's batch (as DDP without SyncBatchNorm does) and their running statistics are averaged,
which keeps evaluation identical on all ranks; ``SyncBatchNorm`` is not used because it needs
CUDA.

Backend: NCCL on CUDA, gloo on CPU. Multi-node: the usual torchrun rendezvous, e.g.
``torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500
-m MedTransferLib train --datalist D --out RUN``.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if world_size() <= 1 or active():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend=backend)


def average_gradients(model: torch.nn.Module) -> None:
    if not active():
        return
    n = torch.distributed.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= n


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running mean/var) over the processes."""
    if not active():
        return
    n = torch.distributed.get_world_size()
    for b in model.buffers():
        if b.is_floating_point():
            torch.distributed.all_reduce(b)
            b /= n


def barrier() -> None:
    if active():
        torch.distributed.barrier()
