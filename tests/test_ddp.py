"""DistributedDataParallel over the SAM3D network: frozen tensors and unused prompt paths must not break
gradient reduction (nnU-Net's ``-num_gpus N`` wraps the network in DDP without find_unused_parameters).
Runs on CPU with the gloo backend, two processes."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, result_file: str, checkpointing: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from sam3d_nnunet.model import SAM3DNet

    torch.manual_seed(0)  # same initial weights on both ranks, as DDP requires
    model = SAM3DNet(1, 3, variant="tiny", patch_size=(8, 16, 8), token_stride=4, window_size=2,
                     gradient_checkpointing=checkpointing)
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False, as nnU-Net does
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(1 + rank)
    image = torch.randn(1, 1, 8, 16, 8)
    for step in range(3):
        if (rank + step) % 2:  # one rank has clicks, the other none (the automatic path)
            clicks, labels = torch.tensor([[[3.0, 5.0, 4.0]]]), torch.tensor([[1]])
        else:
            clicks, labels = torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.long)
        logits = ddp(image, clicks, labels, 1 + step % 2)
        optimizer.zero_grad()
        logits.float().mean().backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        with open(result_file, "w") as f:
            f.write(str(float((gathered[0] - gathered[1]).abs().max())))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed/gloo missing")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_checkpointing"])
def test_ddp_steps_with_and_without_clicks_keep_replicas_identical(tmp_path, checkpointing):
    """Also with activation checkpointing, which the planner switches on where memory is short."""
    result = tmp_path / "max_difference.txt"
    mp.start_processes(_worker, args=(2, _free_port(), str(result), checkpointing), nprocs=2, join=True,
                       start_method="spawn")
    assert float(result.read_text()) == 0.0  # every rank applied the same averaged gradients
