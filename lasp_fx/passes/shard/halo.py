"""Sharding rules for local mixing along the sequence: causal convolutions and shifts take halos from neighbours."""

from __future__ import annotations

import operator

import torch

from lasp_fx.distributed import seq_ops
from lasp_fx.passes.shard.rules import ShardError, _arg, _val

aten = torch.ops.aten
HALO = "lasp_fx_halo"  # node.meta key: (entries added before, after) along the sequence dim


def _halo(ctx, node, x, dim, before: int, after: int, fill: float):
    """cat([previous rank's last `before`, x, next rank's first `after`]) along dim."""
    spec = ctx.spec
    parts = []
    if before:
        parts.append(ctx.call(node, seq_ops.halo_from_previous, x, before, dim, fill, spec.rank, spec.world_size, spec.group_name))
    parts.append(x)
    if after:
        parts.append(ctx.call(node, seq_ops.halo_from_next, x, after, dim, fill, spec.rank, spec.world_size, spec.group_name))
    return parts[0] if len(parts) == 1 else ctx.call(node, aten.cat.default, parts, dim)


def _conv1d(ctx, node):
    """A causal conv over the sequence (padding >= reach, output cut back to s) reads a halo instead of zeros."""
    x, w = node.args[:2]
    seq = ctx.seq_dims(x)
    if not seq:
        return
    nd = _val(x).dim()
    stride, padding = _arg(node, 3, "stride", [1]), _arg(node, 4, "padding", [0])
    dilation = _arg(node, 5, "dilation", [1])
    if seq != (nd - 1,) or isinstance(padding, str) or list(stride) != [1]:
        raise ShardError(node, "a convolution over the sequence that is not a stride-1 causal conv1d", _CONV_HINT)
    reach = dilation[0] * (_val(w).shape[-1] - 1)
    pad = padding[0]
    extended = x.meta.get(HALO) if isinstance(x, torch.fx.Node) else None
    if extended and pad == 0 and extended == (reach, 0):
        return  # F.pad(x, (reach, 0)) then a valid conv: the pad rule already brought the halo
    s = _val(x).shape[-1]
    users_ok = node.users and all(
        u.target is aten.slice.Tensor and u.args[1] % nd == nd - 1 and _arg(u, 2, "start", 0) in (0, None)
        and _val(u).shape[-1] == s for u in node.users
    )
    if pad < reach or not users_ok:
        raise ShardError(
            node,
            f"a convolution over the sequence that sees future positions (padding {pad}, reach {reach}, "
            "output not cut back to the input length)",
            _CONV_HINT,
        )
    x_ext = _halo(ctx, node, x, nd - 1, pad, 0, 0.0)
    node.args = (x_ext, w, node.args[2], stride, [0], dilation) + tuple(node.args[6:])
    node.meta[HALO] = (0, pad - reach)  # its users cut it back to s


_CONV_HINT = (
    "lasp_fx supports causal depthwise/short convolutions written as Conv1d(padding=k-1) followed by "
    "[..., :T], or F.pad(x, (k-1, 0)) followed by a conv without padding"
)


def _pad(ctx, node):
    """constant_pad_nd / pad(mode="constant") along the sequence: fill from the neighbours instead."""
    x, pads = node.args[0], list(node.args[1])
    if node.target is aten.pad.default:
        if _arg(node, 2, "mode", "constant") != "constant":
            raise ShardError(node, "a reflect / replicate / circular pad", _REFUSE)
        value = _arg(node, 3, "value", 0.0) or 0.0
    else:
        value = _arg(node, 2, "value", 0.0) or 0.0
    seq = ctx.seq_dims(x)
    nd = _val(x).dim()
    touched = [d for d in seq if 2 * (nd - 1 - d) < len(pads) and any(pads[2 * (nd - 1 - d): 2 * (nd - 1 - d) + 2])]
    if not touched:
        return
    if len(touched) > 1:
        raise ShardError(node, "pads several sequence-carrying dimensions", _REFUSE)
    d = touched[0]
    i = 2 * (nd - 1 - d)
    before, after = pads[i], pads[i + 1] if i + 1 < len(pads) else 0
    if not (isinstance(before, int) and isinstance(after, int)):
        raise ShardError(node, f"pads the sequence by an amount computed from its length ({before}, {after}): on a "
                         "slice that is the local length", _REFUSE)
    s = ctx.call(node, aten.sym_size.int, x, d)
    if before >= 0 and after >= 0:
        out = _halo(ctx, node, x, d, before, after, float(value))
        extended = (before, after)
    elif before > 0 and after == -before:  # shift towards later positions (token shift)
        kept = ctx.call(node, aten.narrow.default, x, d, 0, ctx.call(node, operator.sub, s, before))
        out = ctx.call(node, aten.cat.default, [_halo_only(ctx, node, x, d, before, 0, value), kept], d)
    elif before < 0 and after == -before:  # shift towards earlier positions (next-token labels)
        kept = ctx.call(node, aten.narrow.default, x, d, -before, ctx.call(node, operator.add, s, before))
        out = ctx.call(node, aten.cat.default, [kept, _halo_only(ctx, node, x, d, 0, after, value)], d)
    else:
        raise ShardError(node, f"pads the sequence by ({before}, {after})", _REFUSE)
    rest = pads[:i] + [0, 0] + pads[i + 2:]
    if any(rest):
        out = ctx.call(node, aten.constant_pad_nd.default, out, rest, value)
    if before >= 0 and after >= 0:
        out.meta[HALO] = extended  # slices of it back to s positions are allowed
    ctx.replace(node, out)


def _halo_only(ctx, node, x, d, before, after, value):
    spec, fn = ctx.spec, seq_ops.halo_from_previous if before else seq_ops.halo_from_next
    width = before or after
    return ctx.call(node, fn, x, width, d, float(value), spec.rank, spec.world_size, spec.group_name)


_REFUSE = "lasp_fx supports shifts by a constant (F.pad(x, (0, 0, n, -n))) and pads followed by a conv or a slice"

RULES = {
    aten.conv1d.default: _conv1d,
    aten.constant_pad_nd.default: _pad,
    aten.pad.default: _pad,
}
