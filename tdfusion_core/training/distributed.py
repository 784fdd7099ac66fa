"""Multi-process training on ``torch.distributed``: process group, sharded batches, the synchronised meta step.

Launch any training run with ``torchrun`` and the :class:`~tdfusion_core.training.trainer.MetaTrainer` joins the process group
itself. ``batch_size`` is the global batch, split in equal shards (:class:`~tdfusion_core.data.sampling.ShardedBatches`)
that every process draws alike (:class:`~tdfusion_core.data.sampling.StepSampler`); the fusion phase runs F and T under
DistributedDataParallel and the meta phase all-reduces explicitly (:class:`DistributedMetaStep`, ``meta_sync: union``
or ``per-shard``). What one step means with N processes, the BatchNorm caveat and multi-node runs:
``docs/training.md``, section "Multi-process training".
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
import torch.distributed as dist
import torch.nn as nn

from tdfusion_core.common.devices import pick_device
from tdfusion_core.kernel.meta import MetaStep, MetaStepResult, Params

log = logging.getLogger(__name__)

MetaSync = Literal["union", "per-shard"]
#: environment variables torchrun sets for every process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_owned_group = False


@attrs.define(frozen=True)
class DistContext:
    """Where this process stands in a multi-process run (``world_size = 1``: a plain single-process run).

    Attributes:
        rank: global rank of this process (0 is the main process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        backend: the process group's backend (``"nccl"``, ``"gloo"``), or ``None`` without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether several processes take part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and fires event hooks."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def current_context() -> DistContext:
    """The context of an initialised default process group, else the single-process context."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistContext(
            rank=rank,
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", rank)),
            backend=str(dist.get_backend()),
        )
    return DistContext()


def default_backend(device: str | torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if pick_device(device).type == "cuda" else "gloo"


def init_distributed(
    device: str | torch.device = "cpu", backend: str | None = None, timeout_s: float = 1800.0
) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment; a no-op without one.

    With ``WORLD_SIZE`` > 1 (and no group yet) the default process group is initialised from the environment
    (``init_method="env://"``) with ``backend`` (default: :func:`default_backend` of ``device``); for a CUDA device
    the process's current device becomes ``cuda:LOCAL_RANK``. A group initialised before (by the caller, or by an
    earlier trainer in this process) is reused as it is. The group this function creates is destroyed at exit
    (:func:`shutdown_distributed` does it earlier).
    """
    global _owned_group
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world = env_world_size()
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch multi-process runs with torchrun "
            "(e.g. `torchrun --nproc_per_node=2 $(which tdfusion) train ...`)"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = pick_device(device)
    backend = backend or default_backend(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    _owned_group = True
    atexit.register(shutdown_distributed)
    log.debug("joined process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown_distributed() -> None:
    """Destroy the default process group if :func:`init_distributed` created it."""
    global _owned_group
    if _owned_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def resolve_device(device: str | torch.device, ctx: DistContext) -> torch.device:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` when several processes take part."""
    dev = pick_device(device)
    if dev.type == "cuda" and ctx.enabled:
        if dev.index is not None and dev.index != ctx.local_rank:
            log.warning("device %s ignored under torchrun: process %d uses cuda:%d", dev, ctx.rank, ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return dev


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if ctx.enabled:
        dist.barrier()


# ---------------------------------------------------------------------------------------------------- collectives
def average_tensors(tensors: Mapping[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """Mean over processes of each tensor of ``tensors`` (new tensors; one all-reduce per dtype).

    Used for G's meta-gradient dict (and, with ``meta_sync: union``, F's and T's inner gradients and ``v``).
    """
    out = {name: t.detach() for name, t in tensors.items()}
    if not ctx.enabled or not out:
        return {name: t.clone() for name, t in out.items()}
    by_dtype: dict[tuple[torch.dtype, torch.device], list[str]] = {}
    for name, t in out.items():
        by_dtype.setdefault((t.dtype, t.device), []).append(name)
    result: dict[str, torch.Tensor] = {}
    for names in by_dtype.values():
        flat = torch.cat([out[n].reshape(-1) for n in names])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        offset = 0
        for n in names:
            numel = out[n].numel()
            result[n] = flat[offset : offset + numel].view_as(out[n])
            offset += numel
    return {name: result[name] for name in tensors}


def agree_finite(values: Mapping[str, torch.Tensor], ctx: DistContext) -> tuple[bool, dict[str, float]]:
    """Whether every value is finite on every process, and each value averaged over the processes.

    A single all-reduce; the decision is the same on every process, so all skip a bad step together (a process that
    skipped a collective alone would hang the others). Non-finite values are reported as ``nan``.
    """
    scalars = {k: v.detach().reshape(()) for k, v in values.items()}
    finite = {k: bool(torch.isfinite(v)) for k, v in scalars.items()}
    local_ok = all(finite.values())
    if not ctx.enabled:
        return local_ok, {k: float(v) for k, v in scalars.items()}
    device = next(iter(scalars.values())).device if scalars else torch.device("cpu")
    buf = torch.tensor(
        [float(v) if finite[k] else 0.0 for k, v in scalars.items()] + [1.0 if local_ok else 0.0],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    ok = round(float(buf[-1])) == ctx.world_size
    means = (buf[:-1] / ctx.world_size).tolist()
    return ok, {k: (m if ok else float("nan")) for k, m in zip(scalars, means)}


def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from process ``src`` to every process."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


# ---------------------------------------------------------------------------------------------------- meta step
@attrs.define
class DistributedMetaStep(MetaStep):
    """:class:`~tdfusion_core.kernel.meta.MetaStep` over N processes, each holding one shard of the meta batches.

    ``sync="union"`` gives the exact meta-gradient of the union of the shards (docs/training.md, "Multi-process
    training"): each process computes its share of every first-order quantity (F's inner gradient, T's gradient,
    ``v``), these are averaged, and the processes' exact meta-gradients of G along the common ``v`` are averaged.
    All three modes (``jvp``, ``double-backward``, ``finite-difference``) are supported. ``sync="per-shard"``
    averages G's meta-gradient only (each process's inner step uses its own shard; T's inner gradient is still averaged when the
    T' rule steps T's real optimizer, so that its state stays the same everywhere). With one process both equal
    :class:`~tdfusion_core.kernel.meta.MetaStep`. The losses in the result are averaged over processes and ``finite`` is
    the same everywhere.

    Args:
        ctx: the process group context.
        sync: ``"union"`` or ``"per-shard"``.
        average_inner_params: with ``per-shard``, also average θF' and θT' (needed when they are adopted, i.e. the
            ablation without a separate fusion phase); with ``union`` they are equal everywhere already.
    """

    ctx: DistContext = attrs.field(factory=DistContext)
    sync: MetaSync = attrs.field(default="union", validator=attrs.validators.in_(("union", "per-shard")))
    average_inner_params: bool = False

    def _reduce(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return average_tensors(tensors, self.ctx) if self.sync == "union" else dict(tensors)

    def _reduce_task_grads(self, grads: Mapping[str, torch.Tensor], advances_state: bool) -> dict[str, torch.Tensor]:
        # a T' rule that steps T's real optimizer needs the same gradient everywhere, or the states would diverge
        if advances_state:
            return average_tensors(grads, self.ctx)
        return self._reduce(grads)

    # Overrides MetaStep._result (meta.py), so the signature is the base's by necessity.
    def _result(
        self,
        grad_g: Params,
        lt: torch.Tensor,
        lf: torch.Tensor,
        lt_inner: torch.Tensor,
        theta_f1: Params,
        theta_t1: Params,
    ) -> MetaStepResult:
        # G's gradient and the logged losses: one all-reduce (always, whatever ``sync``)
        dtype = next(iter(grad_g.values())).dtype if grad_g else torch.float32
        scalars = {"__lt": lt, "__lf": lf, "__lt_inner": lt_inner}
        packed = average_tensors(
            {**grad_g, **{k: s.detach().reshape(1).to(dtype) for k, s in scalars.items()}},
            self.ctx,
        )
        grad_g = {n: packed[n] for n in grad_g}
        task_loss, fusion_loss, inner_loss = (packed[k].reshape(()) for k in scalars)
        if self.sync == "per-shard" and self.average_inner_params:
            theta_f1 = average_tensors(theta_f1, self.ctx)
            theta_t1 = average_tensors(theta_t1, self.ctx)
        return super()._result(grad_g, task_loss, fusion_loss, inner_loss, theta_f1, theta_t1)


class MultiInputForward(nn.Module):
    """``forward(*inputs) -> module(x) for each input``: one DDP forward for several inputs of one backward.

    DDP expects one forward per backward; the fusion step with ``task_loss_on_fusion`` runs F on the crop and on
    the task-size sources, so both go through this wrapper in one call.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> Any:
        outputs = tuple(self.module(x) for x in inputs)
        return outputs[0] if len(outputs) == 1 else outputs


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` of ``module`` on this process's device (CPU: no ``device_ids``)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of ``module`` as :class:`~torch.nn.SyncBatchNorm` (statistics of the union of the shards).

    Only CUDA devices (NCCL) support SyncBatchNorm; on CPU this raises ``ValueError``.
    """
    if device.type != "cuda":
        raise ValueError("sync_batchnorm needs CUDA devices (SyncBatchNorm is not implemented for CPU / gloo)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def __getattr__(name: str) -> Any:
    if name in ("DistributedMetaSampler", "MetaBatchSampler"):  # the sampler's former names and home
        raise AttributeError(
            f"tdfusion_core.training.distributed.{name} is now tdfusion_core.data.sampling.StepSampler: it plans the steps of both "
            "phases (meta_steps(n, epoch, steps), fusion_steps(n, epoch, steps)) and serves single-process runs too"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
