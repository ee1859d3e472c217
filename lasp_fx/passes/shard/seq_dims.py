"""Which dimensions of every graph value carry the sequence, read off symbolic shapes.

`parallelize` traces the model on a local slice whose sequence length is a dynamic size, so
every tensor's shape says where the sequence is: a dimension whose size expression contains the
sequence symbol s (s, 2*s, s + 3, ...) carries positions. Ops that combine values across such a
dimension mix positions and must be made sequence-parallel-correct (passes/shard/__init__.py) or refused.
Ops that only move or combine along other dimensions (pointwise math, projections over features,
views that keep s whole) need nothing.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten


def _expr(size):
    """The sympy expression of a size (a SymInt) or None for a plain int."""
    if isinstance(size, torch.SymInt):
        return size.node.expr
    return None


def size_has(size, symbols: frozenset) -> bool:
    """True when the size's expression involves one of the sequence symbols."""
    e = _expr(size)
    return e is not None and bool(e.free_symbols & symbols)


def seq_dims_of(value, symbols: frozenset) -> tuple[int, ...]:
    """Indices of the dimensions of a (fake) tensor whose sizes carry the sequence."""
    if not isinstance(value, torch.Tensor):
        return ()
    return tuple(i for i, s in enumerate(value.shape) if size_has(s, symbols))


def node_val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def touches_sequence(node: fx.Node, symbols: frozenset) -> bool:
    """Whether any tensor this node reads or produces has a sequence-carrying dimension."""
    vals = [node_val(a) for a in node.all_input_nodes] + _flat(node_val(node))
    return any(seq_dims_of(v, symbols) for v in vals)


def _flat(v):
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _flat(item)]
    return [v]


def sequence_symbols(example_inputs, seq_dim_of_input) -> frozenset:
    """The symbols of the sequence sizes, from the graph's example inputs.

    `seq_dim_of_input(i, value)` returns the sequence dim of input i (or None).
    """
    symbols = set()
    for i, v in enumerate(example_inputs):
        d = seq_dim_of_input(i, v)
        if d is not None and isinstance(v, torch.Tensor):
            e = _expr(v.shape[d])
            if e is not None:
                symbols |= e.free_symbols
    return frozenset(symbols)


def normalize_dims(dims, ndim: int) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(d % ndim if ndim else 0 for d in dims)


def reshape_position_stride(in_shape, out_shape, symbols: frozenset, stride_in=1):
    """The stride of a position inside the output's sequence dim, or None when the reshape cuts or mixes positions.

    Merging the sequence with other dims ([B, s] -> [B*s], [B*s, k] -> [B*s*k]) and undoing such a
    merge keep each position whole and are fine; cutting it into blocks ([s] -> [s/C, C]) or moving
    positions against the other dims ([s, 4] -> [4, s], [2s] -> [s, 2]: every size kept) is not.
    `stride_in` is a position's stride inside the input's sequence dim (1 for a model's inputs; k
    inside [B*s*k]): a reshape keeps positions whole when a position's stride in the flat index of
    its group of dims is the same on both sides. Dims are grouped by equal running products, as
    torch's own view does.
    """
    stride = stride_in
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        gi, gj = [], []
        pi = pj = 1
        if i < len(in_shape):
            gi.append(in_shape[i]); pi = in_shape[i]; i += 1
        if j < len(out_shape):
            gj.append(out_shape[j]); pj = out_shape[j]; j += 1
        while not _same(pi, pj):
            if _smaller(pi, pj) and i < len(in_shape):
                gi.append(in_shape[i]); pi = pi * in_shape[i]; i += 1
            elif j < len(out_shape):
                gj.append(out_shape[j]); pj = pj * out_shape[j]; j += 1
            elif i < len(in_shape):
                gi.append(in_shape[i]); pi = pi * in_shape[i]; i += 1
            else:
                return None  # shapes do not line up: refuse rather than guess
        if len(gi) == len(gj) == 1:
            continue  # a dim kept as it is, whatever its size expression
        if any(size_has(s, symbols) for s in gi):
            stride = _stride_after(gi, gj, symbols, stride_in)
            if stride is None:
                return None
    return stride


def _stride_after(gi, gj, symbols, stride_in):
    """A position's stride inside the output group's sequence dim, or None when positions do not stay whole."""
    import sympy

    if not _whole_positions(gj, symbols):
        return None
    inner_in, inner_out = _inner(gi, symbols), _inner(gj, symbols)
    if inner_in is None or inner_out is None:
        return None
    stride = sympy.sympify(_sym(inner_in)) * sympy.sympify(_sym(stride_in)) / sympy.sympify(_sym(inner_out))
    carrying = _expr(next(s for s in gj if size_has(s, symbols)))
    per_position = carrying / next(iter(carrying.free_symbols & symbols))  # an integer: _whole_positions
    if not (stride.is_Integer and stride >= 1 and (per_position / stride).is_Integer):
        return None
    return int(stride)


def _inner(group, symbols):
    """The product of a group's dims after the one that carries the sequence (None: not exactly one does)."""
    carrying = [i for i, size in enumerate(group) if size_has(size, symbols)]
    if len(carrying) != 1:
        return None
    inner = 1
    for size in group[carrying[0] + 1:]:
        inner = inner * size
    return inner


def _sym(size):
    return _expr(size) if isinstance(size, torch.SymInt) else size


def position_stride(node: fx.Node, symbols: frozenset):
    """A position's stride inside `node`'s sequence dim, or None when the ways it was made disagree.

    Found back through the values with the same sequence size (pointwise, row-wise ops, permutations
    undone): the strides the reshapes before it recorded, and 1 for a model's inputs. A buffer made
    from sizes alone (zeros filled by a scatter) has no layout of its own and says nothing.
    """
    size = _carrying_size(node_val(node), symbols)
    found, seen, todo = set(), {node}, [node]
    while todo:
        n = todo.pop()
        if _STRIDE in n.meta:
            found.add(n.meta[_STRIDE])
            continue
        if n.op == "placeholder":
            found.add(1)
            continue
        for a in n.all_input_nodes:
            if a not in seen and size is not None and _same(_carrying_size(node_val(a), symbols), size):
                seen.add(a)
                todo.append(a)
    if len(found) > 1:
        return None
    return found.pop() if found else 1


def record_position_stride(node: fx.Node, stride: int) -> None:
    node.meta[_STRIDE] = stride


_STRIDE = "lasp_fx_position_stride"


def _carrying_size(value, symbols):
    dims = seq_dims_of(value, symbols)
    return value.shape[dims[0]] if len(dims) == 1 else None


def _whole_positions(out_group, symbols) -> bool:
    """One output dim carries the sequence, as a whole multiple of it (s, B*s; never s/C or s//C)."""
    carrying = [s for s in out_group if size_has(s, symbols)]
    if len(carrying) != 1:
        return False
    expr = _expr(carrying[0])
    return all((expr / sym).is_Integer for sym in expr.free_symbols & symbols) and len(expr.free_symbols) == 1


def _is_one(s) -> bool:
    return not isinstance(s, torch.SymInt) and s == 1


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not (isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt)) else _sym_eq(a, b)
    except Exception:
        return False


def _sym_eq(a, b) -> bool:
    ea = _expr(a) if isinstance(a, torch.SymInt) else a
    eb = _expr(b) if isinstance(b, torch.SymInt) else b
    import sympy

    return sympy.simplify(sympy.sympify(ea) - sympy.sympify(eb)) == 0


def _smaller(a, b) -> bool:
    """A guess at a < b used only to decide which side of the grouping grows next."""
    def hint(x):
        if isinstance(x, torch.SymInt):
            return x.node.hint if x.node.hint is not None else 2**31
        return x

    return hint(a) < hint(b)
