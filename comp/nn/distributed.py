"""Mixed precision and torch.distributed helpers for the fit loop."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# AMP and torch.distributed


def amp_setup(amp: str, device: torch.device) -> tuple[Callable, object | None]:
    """(autocast context factory, GradScaler or None).

    CUDA: bf16 or fp16 (auto picks bf16 where supported). CPU: bf16 only when asked for, and
    only where oneDNN has native bf16 kernels; elsewhere full precision.
    """
    if device.type == "cpu" and amp == "bf16" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext, None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); else stay single-process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return dist_info()


def wrap_ddp(model: nn.Module) -> nn.Module:
    """`model` in torch's DistributedDataParallel for one training phase (the parameters that
    train differ by phase, so each phase wraps anew). Frozen backbones read from the feature
    cache take no part in a phase-1 forward: find_unused_parameters lets DDP skip them."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
