"""Token permutations within a rank (MoE routing): rows sorted, worked on in that order, put back.

    expert_ids_g, perm = torch.sort(expert_ids)            # (token, expert) pairs grouped by expert
    x_g = hidden[perm // top_k]                            # the rows in that order
    y_g = grouped_mm(x_g, w, offs=cumsum(histc(expert_ids_g, ...)))   # each expert on its group
    inv = torch.empty_like(perm); inv[perm] = torch.arange(n)
    out = y_g[inv]                                         # back in token order

Every step reads this rank's rows only, and each output row is a function of its own token: the
composition is position-wise, so it is exact on a slice as it is. This pass proves that by
tracking, for every value downstream of a sort along the sequence, which row of the token order
each of its rows holds (an order: permutations and their inverses, composed). Rows out of order
may meet only ops that keep rows apart; positions may only index; group counts may only become
the offsets of a grouped product whose rows are in the same sorted order. Everything else is
refused. The proven nodes run unchanged (the arange of the inverse keeps its local positions).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from lasp_fx.passes.shard.rules import ShardError, _arg, _val, rule_for
from lasp_fx.passes.shard.tiles import _keeps_positions, _same

aten = torch.ops.aten
_SORTS = {aten.sort.default, aten.sort.stable, aten.argsort.default, aten.argsort.stable}
_CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.clone.default, aten.detach.default,
          aten.contiguous.default, aten.alias.default}
_FLOOR_DIVS = {aten.floor_divide.default, aten.floor_divide.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode}
_SIZES = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten.empty_like.default,
          aten.zeros_like.default, aten.ones_like.default, aten.full_like.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints}
_ROW_OPS = {aten.one_hot.default}  # row-wise ops with no shard rule (they never touch the sequence otherwise)
_HINT = ("lasp_fx supports tokens permuted within a rank when the permutation is undone: sort the rows, gather "
         "them with the sort's indices, work on each row (or each group of a grouped product), and scatter or "
         "gather them back with the inverse permutation")


@dataclass(frozen=True)
class _Rows:
    """Row r along the sequence dim holds the content of row `order(r)` of the token order."""
    order: tuple  # (("perm" | "inv", sort node), ...), applied left to right; () is the token order
    keys: fx.Node | None = None  # the sort whose sorted keys these are (casts kept)


@dataclass(frozen=True)
class _Positions:
    """Row positions used as indices: value r is `order(r)` (a trailing ("div", k): integer-divided)."""
    order: tuple


@dataclass(frozen=True)
class _Groups:
    """Rows per group of a sort's keys (histc), or their running total (the offsets)."""
    sort: fx.Node
    offsets: bool


def claim(ctx, rules: dict) -> set[fx.Node]:
    """The nodes of every permuted region, proven position-wise as a whole (ShardError otherwise);
    `rules` is the shard pass's rule table (to check the ops that keep rows apart)."""
    state: dict[fx.Node, object] = {}
    claimed: set[fx.Node] = set()
    for node in ctx.graph.nodes:
        if node.op != "call_function":
            continue
        stateful = any(a in state for a in node.all_input_nodes)
        if node.target in _SORTS and _sorts_rows(ctx, node):
            if stateful:
                raise ShardError(node, "sorts rows that are already in permuted order", _HINT)
            argsort = node.target in (aten.argsort.default, aten.argsort.stable)
            state[node] = _Positions((("perm", node),)) if argsort else node  # sort: getitems [0] keys, [1] perm
            claimed.add(node)
            continue
        if not stateful:
            continue
        try:
            out = _transfer(ctx, node, state, claimed, rules)
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001 - a form this pass does not understand is still a verdict
            raise ShardError(node, f"lasp_fx could not follow the permuted rows through this op ({type(e).__name__}: "
                             f"{e})", _HINT) from e
        claimed.add(node)
        if out is not None and out != _Rows(()):
            state[node] = out
    for value in ctx.graph.output_node().all_input_nodes:
        if value in state:
            raise ShardError(value, "returns rows in permuted order (or their positions) from the model", _HINT)
    return claimed


def _sorts_rows(ctx, node) -> bool:
    x = node.args[0]
    dim = _arg(node, 1, "dim", -1) if node.target in (aten.sort.default, aten.argsort.default) else \
        node.kwargs.get("dim", -1)
    if dim % _val(x).dim() not in ctx.seq_dims(x):
        return False
    if _val(x).dim() != 1:
        raise ShardError(node, "sorts a tensor with more than one dimension along the sequence", _HINT)
    return True


def _rows_of(ctx, node) -> int | torch.SymInt:
    dims = ctx.seq_dims(node)
    if len(dims) != 1:
        raise ShardError(node, "permutes rows of a tensor with several sequence dims", _HINT)
    return _val(node).shape[dims[0]]


def _transfer(ctx, node, state, claimed, rules):
    t, get = node.target, (lambda a: state.get(a) if isinstance(a, fx.Node) else None)
    if t is operator.getitem:
        src = node.args[0]
        if src.target in _SORTS:  # sort(...)[0] are the sorted keys, [1] the permutation
            if node.args[1] == 0:
                return _Rows((("perm", src),), keys=src)
            return _Positions((("perm", src),))
        return get(src)  # a piece of a split of the features: the same rows
    if t in _SIZES:
        return None  # the shape only
    if t in _FLOOR_DIVS:
        return _floor_div(node, get(node.args[0]))
    if t in (aten.index.Tensor, aten.index_select.default):
        return _gather(ctx, node, get)
    if t in (aten.index_put.default, aten.index_add.default, aten.index_copy.default):
        return _scatter(ctx, node, get, claimed)
    if t is aten.histc.default:
        return _histc(node, get(node.args[0]))
    if t is aten.cumsum.default and isinstance(get(node.args[0]), _Groups) and not get(node.args[0]).offsets:
        return _Groups(get(node.args[0]).sort, offsets=True)
    if _is_grouped_mm(t):
        return _grouped(ctx, node, get)
    return _row_wise(ctx, node, get, rules)


def _floor_div(node, pos):
    k = node.args[1]
    if node.target in (aten.div.Tensor_mode, aten.div.Scalar_mode) and node.kwargs.get("rounding_mode") != "floor":
        raise ShardError(node, "divides the positions of a permutation without rounding down", _HINT)
    if not isinstance(pos, _Positions) or not isinstance(k, int) or k < 1 or (pos.order and pos.order[-1][0] == "div"):
        raise ShardError(node, "computes with the positions of a permutation beyond pairs // top_k", _HINT)
    return pos if k == 1 else _Positions(pos.order + (("div", k),))


def _gather(ctx, node, get):
    """x[idx] along one dim: by positions (rows reordered) or by per-row ids into a table."""
    x = node.args[0]
    if node.target is aten.index_select.default:
        dim, idx = _arg(node, 1, "dim", 0) % _val(x).dim(), node.args[2]
    else:
        used = [(d, i) for d, i in enumerate(node.args[1]) if i is not None]
        if len(used) != 1:
            raise ShardError(node, "indexes with several index tensors next to a permutation", _HINT)
        (dim, idx), = used
    pos, rows = get(idx), get(x)
    if isinstance(pos, _Positions):
        if ctx.seq_dims(x) != (dim,) or isinstance(rows, (_Positions, _Groups)):
            raise ShardError(node, "indexes with the positions of a permutation along a dim that is not the rows'", _HINT)
        order = pos.order
        if order[-1][0] == "div":  # x[perm // k]: x's row for each (token, slot) pair
            k, order = order[-1][1], order[:-1]
            if rows is not None or not _pairs_of(ctx, order[0][1].args[0], x, k):
                raise ShardError(node, f"gathers rows with perm // {k} from a tensor whose rows are not the tokens "
                                 f"of the sorted pairs ([tokens, {k}] flattened)", _HINT)
            return _Rows(order)
        if not _same(_rows_of(ctx, x), _rows_of(ctx, order[0][1].args[0])):
            raise ShardError(node, "gathers rows with a permutation of another number of rows", _HINT)
        return _Rows(_compose(order, rows.order if rows else ()))
    if isinstance(pos, _Rows) and rows is None and not ctx.seq_dims(x):  # table[ids]: per-row lookups
        _rows_check(ctx, node, pos)
        return _Rows(pos.order)
    raise ShardError(node, "indexes rows in permuted order with something other than their positions", _HINT)


def _pairs_of(ctx, keys, x, k) -> bool:
    """The sorted keys are a [tokens, k] tensor flattened, tokens being x's rows: pair p is token p // k."""
    if ctx.seq_dims(x) != (0,):
        return False
    while keys.target in _CASTS or keys.target in _VIEWS:
        src = keys.args[0]
        shape = list(_val(src).shape)
        if keys.target in _VIEWS and len(shape) == 2 and _same(shape[1], k) and _same(shape[0], _val(x).shape[0]):
            return True
        keys = src
    return False


def _scatter(ctx, node, get, claimed):
    """inv[perm] = arange(n) (the inverse), or out[perm] = y / out.index_add(0, perm, y) (rows put back)."""
    base = node.args[0]
    if node.target is aten.index_put.default:
        indices, src = node.args[1], node.args[2]
        accumulate = _arg(node, 3, "accumulate", False)
        used = [(d, i) for d, i in enumerate(indices) if i is not None]
        if len(used) != 1:
            raise ShardError(node, "writes with several index tensors next to a permutation", _HINT)
        (dim, idx), = used
    else:
        dim, idx, src = _arg(node, 1, "dim", 0) % _val(base).dim(), node.args[2], node.args[3]
        accumulate = node.target is aten.index_add.default
    pos = get(idx)
    if not isinstance(pos, _Positions) or any(s[0] == "div" for s in pos.order) or get(base) is not None:
        raise ShardError(node, "writes into rows at positions that are not a permutation of them", _HINT)
    n = _rows_of(ctx, pos.order[0][1].args[0])
    if ctx.seq_dims(base) != (dim,) or not _same(_val(base).shape[dim], n):
        raise ShardError(node, "scatters by a permutation into a tensor of another number of rows", _HINT)
    inverse = _inverse(pos.order)
    if _is_arange(src, n) and not accumulate and len(src.users) == 1:
        claimed.add(src)  # its local positions are what the inverse needs: no global offset
        return _Positions(inverse)
    rows = get(src)
    if isinstance(rows, (_Positions, _Groups)) or (rows is None and ctx.seq_dims(src)):
        raise ShardError(node, "scatters values that are not rows in the permutation's order", _HINT)
    order = _compose(inverse, rows.order if rows else ())
    if accumulate and order:
        raise ShardError(node, "adds rows into a tensor in an order that is not the tokens'", _HINT)
    return _Rows(order)


def _histc(node, keys):
    """Rows per group of sorted keys: exact offsets when no key falls outside [min, max]."""
    if not isinstance(keys, _Rows) or keys.keys is None:
        raise ShardError(node, "counts rows of a permutation that are not its sorted keys", _HINT)
    sort = keys.keys
    descending = _arg(sort, 2, "descending", False) if sort.target is aten.sort.default else \
        sort.kwargs.get("descending", False)
    if descending:  # grouped products count groups from the smallest key up
        raise ShardError(node, "counts keys sorted in descending order per group", _HINT)
    low, high = _arg(node, 2, "min", 0), _arg(node, 3, "max", 0)
    top = _index_bound(sort.args[0])
    if top is None or low > 0 or high < top or low >= high:
        raise ShardError(node, f"counts sorted keys per group with bounds [{low}, {high}] that may leave keys out "
                         "(they would shift every later group)", "Bound histc by the number of experts")
    return _Groups(keys.keys, offsets=False)


def _index_bound(node):
    """The largest value of an index tensor made by topk / sort / argmax over a dim of fixed size."""
    while node.target in _CASTS or node.target in _VIEWS:
        node = node.args[0]
    if node.target is operator.getitem and node.args[1] == 1:
        src = node.args[0]
        if src.target in (aten.topk.default, aten.sort.default, aten.max.dim, aten.min.dim):
            dim = _arg(src, 2 if src.target is aten.topk.default else 1, "dim", -1)
            size = _val(src.args[0]).shape[dim]
            return size - 1 if isinstance(size, int) else None
    return None


def _is_grouped_mm(target) -> bool:
    name = str(target)
    return name.startswith("aten._grouped_mm") or name.startswith("transformers.grouped_mm")


def _grouped(ctx, node, get):
    """grouped_mm(x, w, offs): row i times w[group of row i]; the groups are the sorted keys' own."""
    x, offs = node.args[0], node.args[2] if len(node.args) > 2 else node.kwargs.get("offs")
    rows, groups = get(x), get(offs)
    if any(get(a) is not None for a in node.args[1:2]) or not isinstance(groups, _Groups) or not groups.offsets \
            or not isinstance(rows, _Rows) or rows.order != (("perm", groups.sort),):
        raise ShardError(node, "a grouped product whose rows are not in the order of the keys its offsets count",
                         _HINT)
    _rows_check(ctx, node, rows)
    return _Rows(rows.order)


def _row_wise(ctx, node, get, rules):
    """Any other op: allowed when it keeps rows apart and every permuted input is in the same order."""
    ins = [get(a) for a in node.all_input_nodes]
    if any(isinstance(s, (_Positions, _Groups)) for s in ins):
        raise ShardError(node, "uses the positions or group counts of a permutation as values", _HINT)
    orders = {s.order for s in ins if isinstance(s, _Rows)}
    natural = [a for a in node.all_input_nodes if get(a) is None and ctx.seq_dims(a)]
    if len(orders) != 1 or natural:
        raise ShardError(node, "combines rows in two different orders (one of them permuted)", _HINT)
    rule = rule_for(node.target, rules)
    if not (_keeps_positions(rule) or node.target in _ROW_OPS):
        raise ShardError(node, "mixes rows that are in permuted order", _HINT)
    (order,) = orders
    out = _Rows(order)
    _rows_check(ctx, node, out)
    if node.target in _VIEWS and not _keeps_leading(ctx, node):
        raise ShardError(node, "reshapes rows in permuted order across the row dimension", _HINT)
    try:
        rule and rule(ctx, node)  # the op's own check: a sum or a running sum over the rows is refused
    except ShardError as e:
        raise ShardError(node, "mixes rows that are in permuted order (which rows come first depends on the "
                         f"other tokens): {str(e).removeprefix(f'{e.op} at {e.source}: ').split('. ')[0]}", _HINT) from e
    keys = {s.keys for s in ins if isinstance(s, _Rows)}
    return _Rows(order, keys=keys.pop()) if node.target in _CASTS and len(keys) == 1 else out


def _rows_check(ctx, node, rows: _Rows):
    """Every tensor the node makes has the rows of the permuted layout along its one sequence dim."""
    n = _rows_of(ctx, rows.order[0][1].args[0])
    vals = _val(node) if isinstance(_val(node), (tuple, list)) else [_val(node)]
    for v in vals:
        if isinstance(v, torch.Tensor):
            dims = ctx.seq_dims_of(v)
            if len(dims) != 1 or not _same(v.shape[dims[0]], n):
                raise ShardError(node, "changes the rows of a tensor in permuted order", _HINT)


def _keeps_leading(ctx, node) -> bool:
    """A view that reshapes only the dims after the rows' (each row's elements stay that row's)."""
    src, out = _val(node.args[0]), _val(node)
    (d,) = ctx.seq_dims_of(src)
    return ctx.seq_dims_of(out) == (d,) and all(_same(a, b) for a, b in zip(src.shape[:d + 1], out.shape[:d + 1]))


def _compose(first: tuple, then: tuple) -> tuple:
    """The order of rows `first` of a value whose own rows are in order `then`: r -> then(first(r))."""
    out = list(first)
    for step in then:
        if out and out[-1][1] is step[1] and {out[-1][0], step[0]} == {"perm", "inv"}:
            out.pop()  # a permutation and its inverse cancel
        else:
            out.append(step)
    return tuple(out)


def _inverse(order: tuple) -> tuple:
    return tuple(("inv" if kind == "perm" else "perm", sort) for kind, sort in reversed(order))


def _is_arange(node, n) -> bool:
    if not isinstance(node, fx.Node) or node.target not in (aten.arange.default, aten.arange.start):
        return False
    start, end = (0, node.args[0]) if node.target is aten.arange.default else node.args[:2]
    end_val = _val(end) if isinstance(end, fx.Node) else end
    return start == 0 and _same(end_val, n)
