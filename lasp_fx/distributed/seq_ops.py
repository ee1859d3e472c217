"""Differentiable collectives the sharding pass inserts around position-mixing ops (not attention).

All are built from functional collectives (`torch.distributed._functional_collectives`), which
trace under torch.compile on torch 2.11 and 2.13, and take the group by name so that no process
group is captured in module state. Rank and world size are passed in: the sharding pass bakes
them into each rank's graph.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from lasp_fx.distributed.softmax_sp import causal_attention_over_ranks  # noqa: F401 - the sharding pass's target


# renamed in torch 2.13; 2.11 has only the old name
_all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


class _SumGradOverRanks(torch.autograd.Function):
    """Backward: the gradient summed over the group. Forward: x summed too, or x itself."""

    @staticmethod
    def forward(ctx, x, group_name, sum_forward):
        ctx.group_name = group_name
        return funcol.all_reduce(x.contiguous(), "sum", group_name) if sum_forward else x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return funcol.all_reduce(grad.contiguous(), "sum", ctx.group_name), None, None


def sum_over_ranks(x: Tensor, group_name: str) -> Tensor:
    """The sum of x over the group (local values -> one replicated value).

    Gradients of replicated values are kept as *partial* shares whose sum over ranks is the true
    gradient (the graph's replicated outputs seed 1/P each: `partial_output`), so the backward
    sums the shares: every rank's summand gets the true gradient of the replicated sum.
    """
    return _SumGradOverRanks.apply(x, group_name, True)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def partial_output(x: Tensor, world_size: int) -> Tensor:
    """x unchanged; its gradient becomes this rank's 1/P share.

    Every rank holds the same replicated output (a loss, a pooled vector) and backpropagates the
    same gradient into it. Taking 1/P on each keeps the parameters used after the reduction
    (a classifier on pooled features) from being counted P times when `sum_grad_over_ranks`
    adds up the ranks' gradients.
    """
    return _ScaleGrad.apply(x, 1.0 / world_size)


def sum_grad_over_ranks(param: Tensor, group_name: str) -> Tensor:
    """`param` itself, whose gradient is summed over the group: replicated parameters see only
    their rank's tokens, and the single-device gradient is the sum of those shares.

    Inserted in the graph at each parameter's input, so every rank runs the all-reduce of every
    parameter in the same order whether or not its tokens used that parameter (an unused branch
    or an expert no token was routed to contributes zeros, never a missing collective).
    """
    return _SumGradOverRanks.apply(param, group_name, False)


def _neighbour_edge(x: Tensor, width: int, dim: int, take_last: bool, group_name: str, world_size: int) -> Tensor:
    """All ranks' first or last min(width, n) entries along dim, stacked as [P, ...]."""
    n = x.shape[dim]
    width = min(width, n)  # wider halos take whole slices (all ranks' n are equal)
    edge = x.narrow(dim, n - width, width) if take_last else x.narrow(dim, 0, width)
    gathered = _all_gather_autograd(edge.contiguous().unsqueeze(0), 0, group_name)
    return gathered.view(world_size, *edge.shape)


def _filled(like: Tensor, fill: float) -> Tensor:
    # Filled but still downstream of the all-gather: the edge ranks must join its backward
    # (a reduce-scatter) like every other rank, or the others would wait forever.
    return like.masked_fill(torch.ones_like(like, dtype=torch.bool), fill)


def _halo(x, width, dim, fill, rank, world_size, group_name, previous: bool) -> Tensor:
    """`width` entries next to this rank's slice: from the ranks before it (previous) or after it,
    `fill` beyond the sequence's ends. A halo wider than a slice spans several ranks."""
    if width == 0:
        return x.narrow(dim, 0, 0)
    edges = list(_neighbour_edge(x, width, dim, previous, group_name, world_size))
    filler = [_filled(edges[0], fill)] * -(-width // edges[0].shape[dim])  # ceil(width / edge width)
    if previous:
        return torch.cat(filler + edges[:rank], dim).narrow(dim, -width, width)
    return torch.cat(edges[rank + 1:] + filler, dim).narrow(dim, 0, width)


def halo_from_previous(x: Tensor, width: int, dim: int, fill: float, rank: int, world_size: int, group_name: str) -> Tensor:
    """The last `width` entries along `dim` before this rank's slice (`fill` before the sequence).

    Costs one all-gather of width x (other dims) elements: for a kernel-4 conv over 64 channels,
    3 x 64 values per rank. The backward returns each halo's gradient to the rank that owns it.
    """
    return _halo(x, width, dim, fill, rank, world_size, group_name, previous=True)


def halo_from_next(x: Tensor, width: int, dim: int, fill: float, rank: int, world_size: int, group_name: str) -> Tensor:
    """The first `width` entries along `dim` after this rank's slice (`fill` after the sequence)."""
    return _halo(x, width, dim, fill, rank, world_size, group_name, previous=False)


def gather_sequence(x: Tensor, dim: int, group_name: str) -> Tensor:
    """All ranks' slices of x concatenated along the sequence dim (backward: this rank's share)."""
    return _all_gather_autograd(x.contiguous(), dim, group_name)
