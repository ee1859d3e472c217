"""Chunked causal linear attention in plain PyTorch: the CPU path and the fallback everywhere.

The two primitives every implementation of the op provides, `fwd` and `bwd`, with the
`state_hook` through which LASP folds a late state into the per-chunk states instead of a
second pass (docs/design.md §3). Computed in float32 (float64 for float64 inputs); memory is
linear in T.

Packed documents (`runs` [B, T + 1] int32, ops/documents.py): every term between two tokens of
different documents is masked out, the state entering a chunk reaches only its tokens before the
chunk's first document start, and a chunk with a start in it passes no earlier state on. Masks,
not a -inf log-decay: the decays are the tokens' own, so nothing loses precision at a reset.
s_in is the state of the slice's first document (runs[:, 0]), s_out that of its last.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_SIZE = 64


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and state dtype for inputs of `dtype`: float64 stays, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- layouts
# Inside this file heads come first and the sequence is cut into N chunks of C tokens:
#   q, do, dq: [B, Hk, N, G, C, F]  (query head h = hk * G + g, G = H / H_kv)
#   k, v:      [B, Hk, N, C, F]     (never repeated over G: GQA shares them by broadcasting)
#   g-cumsum:  [B, Hk, N, G, C]


def _pad_time(x: Tensor, padded: int) -> Tensor:
    pad = padded - x.shape[1]
    if pad == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)


def _chunk_q(x: Tensor, kv_heads: int, C: int, dtype: torch.dtype) -> Tensor:
    B, T, H, F = x.shape
    N = -(-T // C)
    x = _pad_time(x.to(dtype), N * C).view(B, N, C, kv_heads, H // kv_heads, F)
    return x.permute(0, 3, 1, 4, 2, 5)


def _chunk_kv(x: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    B, T, Hk, F = x.shape
    N = -(-T // C)
    return _pad_time(x.to(dtype), N * C).view(B, N, C, Hk, F).permute(0, 3, 1, 2, 4)


def _unchunk_q(x: Tensor, T: int) -> Tensor:
    B, Hk, N, G, C, F = x.shape
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, N * C, Hk * G, F)[:, :T].contiguous()


def _unchunk_kv(x: Tensor, T: int) -> Tensor:
    B, Hk, N, C, F = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, N * C, Hk, F)[:, :T].contiguous()


def _per_token(g: Tensor | None, B: int, T: int, H: int, dtype: torch.dtype) -> Tensor | None:
    if g is None:
        return None
    return g.to(dtype).expand(B, T, H) if g.dim() == 1 else g.to(dtype)


def _chunk_cumdecay(g: Tensor | None, B: int, T: int, H: int, Hk: int, C: int, dtype) -> Tensor | None:
    """Decay accumulated inside each chunk, [B, Hk, N, G, C]; padded tokens decay by 0."""
    a = _per_token(g, B, T, H, dtype)
    if a is None:
        return None
    N = -(-T // C)
    a = _pad_time(a, N * C).view(B, N, C, Hk, H // Hk).permute(0, 3, 1, 4, 2)
    return torch.cumsum(a, dim=-1)


class _Runs:
    """Packed documents per chunk, as masks broadcasting over heads: [B, 1, N, 1, C] per token, [B, 1, N, 1] per chunk.

    recv: the token sees the state entering its chunk; feed: it reaches the state leaving it;
    keep: the chunk passes the entering state on (no document starts in it); same: [.., C, C]
    pairs of one document. Tokens past T take the last token's run (their q, k, v are zero).
    """

    def __init__(self, runs: Tensor, N: int, C: int):
        B, T = runs.shape[0], runs.shape[1] - 1
        self.first, self.last = runs[:, 0], runs[:, -1]
        r = torch.cat([runs, runs[:, -1:].expand(B, N * C - T)], dim=1)  # [B, N*C + 1]
        tok = r[:, 1:].view(B, N, C)
        self.before = r[:, 0 : N * C : C]  # the run of the state entering chunk n
        self.after = r[:, C::C]  # the run of the state leaving it (its last real token's)
        self.recv = (tok == self.before[..., None])[:, None, :, None]
        self.feed = (tok == self.after[..., None])[:, None, :, None]
        self.keep = (self.after == self.before)[:, None, :, None]
        self.same = (tok[..., :, None] == tok[..., None, :])[:, None, :, None]

    def reach(self, reverse: bool) -> Tensor:
        """[B, 1, N, 1]: the state entering the slice reaches chunk n (reverse: a gradient of the
        state leaving the slice reaches the state leaving chunk n)."""
        hit = self.after == self.last[:, None] if reverse else self.before == self.first[:, None]
        return hit[:, None, :, None]

    def survives(self) -> Tensor:
        """[B, 1]: the state entering the slice reaches its end."""
        return (self.last == self.first)[:, None]


def _state_heads(s: Tensor | None, Hk: int) -> Tensor | None:
    """[B, H, D, E] -> [B, Hk, G, D, E]."""
    if s is None:
        return None
    B, H, D, E = s.shape
    return s.view(B, Hk, H // Hk, D, E)


def exclusive_cumsum(a: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """sum_{m<n} a_m along `dim` (reverse: sum_{m>n} a_m): running sums, never differences of long sums."""
    if reverse:
        return exclusive_cumsum(a.flip(dim), dim).flip(dim)
    head = torch.zeros_like(a.narrow(dim, 0, 1))
    return torch.cumsum(torch.cat([head, a.narrow(dim, 0, a.shape[dim] - 1)], dim), dim)


def split_late(value) -> tuple:
    """(late state or None, far-end state with it or None) from what a late callable gave."""
    return value if isinstance(value, tuple) else (value, None)


def await_late(state_hook, local_state: Tensor):
    """Call `state_hook(local_state)`; return the zero-argument callable giving the late state (or None)."""
    late = None if state_hook is None else state_hook(local_state)
    if late is not None and not callable(late):
        raise TypeError(f"state_hook must return None or a callable giving the late state, got {type(late).__name__}")
    return late


class _Chunks:
    """The chunked view of one call's inputs, shared by the forward and the backward."""

    def __init__(self, q, k, v, g, scale, C, runs=None):
        self.B, self.T, self.H, self.D = q.shape
        self.Hk, self.E = k.shape[2], v.shape[-1]
        self.G = self.H // self.Hk
        self.dtype = acc_dtype(q.dtype)
        self.C = C
        self.N = -(-self.T // C)
        self.q = _chunk_q(q, self.Hk, C, self.dtype) * scale  # scale folded into q
        self.k = _chunk_kv(k, C, self.dtype)
        self.v = _chunk_kv(v, C, self.dtype)
        self.b = _chunk_cumdecay(g, self.B, self.T, self.H, self.Hk, C, self.dtype)
        self.runs = None if runs is None else _Runs(runs, self.N, C)
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        if self.runs is not None:
            causal = causal & self.runs.same  # [B, 1, N, 1, C, C]
        if self.b is None:
            self.mask = causal.to(self.dtype)  # [C, C]
        else:
            diff = self.b[..., :, None] - self.b[..., None, :]  # b_i - b_j
            self.mask = torch.exp(diff.masked_fill(~causal, float("-inf")))  # [B,Hk,N,G,C,C]

    def fold(self, x: Tensor) -> Tensor:
        """[B, Hk, N, G, C, F] -> [B, Hk, N, G*C, F]: rows of all G query heads of a kv head."""
        return x.reshape(self.B, self.Hk, self.N, self.G * self.C, x.shape[-1])

    def unfold(self, x: Tensor) -> Tensor:
        return x.view(self.B, self.Hk, self.N, self.G, self.C, x.shape[-1])

    def scores(self) -> Tensor:
        """scale * q k^T inside each chunk, [B, Hk, N, G, C, C]."""
        s = self.fold(self.q) @ self.k.transpose(-1, -2)
        return s.view(self.B, self.Hk, self.N, self.G, self.C, self.C)

    def inter(self, states: Tensor) -> Tensor:
        """exp(b_t) scale q_t S: the outputs from the states entering each chunk ([.., N, G, D, E] or broadcast)."""
        w = self.from_start()
        out = self.q @ states
        return out if w is None else out * w[..., None]

    def from_start(self) -> Tensor | None:
        """exp(b_t), masked to the tokens the state entering the chunk reaches, [B, Hk, N, G, C] (or broadcast)."""
        w = None if self.b is None else torch.exp(self.b)
        if self.runs is None:
            return w
        return self.runs.recv.to(self.dtype) if w is None else w * self.runs.recv

    def chunk_decay(self) -> Tensor | None:
        """Total log-decay of each chunk, [B, Hk, N, G]."""
        return None if self.b is None else self.b[..., -1]

    def carry(self) -> Tensor | None:
        """exp(total log-decay) of each chunk, 0 where a document starts in it: [B, Hk, N, G] (or broadcast)."""
        A = self.chunk_decay()
        w = None if A is None else torch.exp(A)
        if self.runs is None:
            return w
        return self.runs.keep.to(self.dtype) if w is None else w * self.runs.keep

    def decay_to_end(self) -> Tensor | None:
        """exp(b_C - b_j): how token j's contribution decays by the end of its chunk (0 if it does not get there)."""
        w = None if self.b is None else torch.exp(self.b[..., -1:] - self.b)
        if self.runs is None:
            return w
        return self.runs.feed.to(self.dtype) if w is None else w * self.runs.feed

    def states_before(self, s_in: Tensor | None) -> tuple[Tensor, Tensor]:
        """State entering each chunk [B, Hk, N, G, D, E] and the state after the last chunk."""
        kk = self.k.unsqueeze(3)  # [B, Hk, N, 1, C, D]
        w = self.decay_to_end()
        if w is not None:
            kk = kk * w[..., None]
        U = kk.transpose(-1, -2) @ self.v.unsqueeze(3)  # [B, Hk, N, G or 1, D, E]
        U = U.expand(self.B, self.Hk, self.N, self.G, self.D, self.E)
        w = self.carry()
        S = self.q.new_zeros(self.B, self.Hk, self.G, self.D, self.E) if s_in is None else s_in
        before = []
        for n in range(self.N):  # an affine scan over chunks: N steps of a D x E axpy
            before.append(S)
            S = (S if w is None else w[:, :, n][..., None, None] * S) + U[:, :, n]
        return torch.stack(before, dim=2), S

    def fold_late(self, states: Tensor, end: Tensor, late: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        """Add a state that entered the slice's start (reverse: a gradient that left its end) late.

        states [B, Hk, N, G, D, E] are the per-chunk states, `end` the far-end state [B, H, D, E];
        the late state reaches chunk n decayed by the chunks between ([B, H, D, E] -> same shapes).
        """
        sl = _state_heads(late.to(self.dtype), self.Hk).unsqueeze(2)  # [B, Hk, 1, G, D, E]
        late = late.to(self.dtype)
        A = self.chunk_decay()
        if A is None:
            if self.runs is None:
                return states + sl, end + late
            w, total = self.runs.reach(reverse).to(self.dtype), self.runs.survives().to(self.dtype)
            return states + w[..., None, None] * sl, end + total[..., None, None] * late
        w = torch.exp(exclusive_cumsum(A, dim=2, reverse=reverse))
        total = torch.exp(A.sum(2)).reshape(self.B, self.H)
        if self.runs is not None:  # no further than the slice's first document (reverse: its last)
            w, total = w * self.runs.reach(reverse), total * self.runs.survives()
        return states + w[..., None, None] * sl, end + total[..., None, None] * late


def saved_shape(q: Tensor, v: Tensor, g: Tensor | None, kv_heads: int) -> tuple:
    """What `fwd(save=True)` keeps for the backward here: nothing (the Triton kernels keep their states)."""
    return (0,)


def fwd(
    q, k, v, g, scale: float, s_in=None, state_hook=None, chunk_size: int = CHUNK_SIZE, save: bool = False,
    runs=None,
):  # fmt: skip
    """Output and final state of one slice with state `s_in` [B, H, D, E] flowing in.

    `state_hook(s_local)` is called as soon as the final state from the tokens and `s_in` is
    known, before any output exists; a late state it returns (module docstring) is folded in.
    `save` asks for what the backward may reuse: an empty tensor here, shaped `saved_shape`.
    `runs`: packed documents (module docstring).

    Returns (o [B, T, H, E] in q's dtype, s_out [B, H, D, E] in the accumulation dtype), and the
    saved tensor with `save`.
    """
    c = _Chunks(q, k, v, g, scale, chunk_size, runs)
    S_before, s_out = c.states_before(_state_heads(_as(s_in, c.dtype), c.Hk))
    s_out = s_out.reshape(c.B, c.H, c.D, c.E)
    late = await_late(state_hook, s_out)
    s_late, end = split_late(None if late is None else late())
    if s_late is not None:
        S_before, s_out = c.fold_late(S_before, s_out, s_late, reverse=False)
        s_out = s_out if end is None else end.to(c.dtype)
    P = c.scores() * c.mask
    o = c.unfold(c.fold(P.reshape(c.B, c.Hk, c.N, c.G * c.C, c.C)) @ c.v) + c.inter(S_before)  # intra + states
    o = _unchunk_q(o, c.T).to(q.dtype)
    return (o, s_out, s_out.new_empty(saved_shape(q, v, g, c.Hk))) if save else (o, s_out)


def bwd(
    q, k, v, g, scale: float, do, s_in=None, ds_out=None, state_hook=None, chunk_size: int = CHUNK_SIZE,
    decay_grad: bool = True, saved=None, runs=None,
):  # fmt: skip
    """Gradients of one slice given `do` and the gradient `ds_out` of its final state.

    `state_hook(ds_local)` is called as soon as the gradient of the incoming state from `do`
    and `ds_out` is known; a late gradient it returns is awaited after dq and folded in.
    `decay_grad=False` skips dG (a decay that is a fixed buffer, as in RetNet and lightning attention).
    `saved` (what fwd(save=True) kept, and its s_out) is not used here: this path recomputes.
    `runs`: packed documents (module docstring).

    Returns (dq, dk, dv in the input dtypes, dG [B, T, H] or None when g is None or not
    decay_grad, and ds_in [B, H, D, E], the gradient of the incoming state).
    """
    c = _Chunks(q, k, v, g, scale, chunk_size, runs)
    do_c = _chunk_q(do, c.Hk, c.C, c.dtype)
    S_before, s_out = c.states_before(_state_heads(_as(s_in, c.dtype), c.Hk))
    rows = (c.B, c.Hk, c.N, c.G * c.C, c.C)

    # reverse scan of the state gradient: dS_{n-1} = exp(A_n) dS_n + (exp(b) q)^T dO
    w = c.carry()
    eb = c.from_start()
    eb = None if eb is None else eb[..., None]
    qd = c.q if eb is None else c.q * eb
    dU = qd.transpose(-1, -2) @ do_c  # [B, Hk, N, G, D, E]
    dS_run = c.q.new_zeros(c.B, c.Hk, c.G, c.D, c.E) if ds_out is None else _state_heads(_as(ds_out, c.dtype), c.Hk)
    after = [None] * c.N
    for n in reversed(range(c.N)):
        after[n] = dS_run
        dS_run = (dS_run if w is None else w[:, :, n][..., None, None] * dS_run) + dU[:, :, n]
    dS_after = torch.stack(after, dim=2)
    ds_in = dS_run.reshape(c.B, c.H, c.D, c.E)
    late = await_late(state_hook, ds_in)

    # intra-chunk: dScores = (dO V^T) * M, then dQ = dScores K, dK = dScores^T Q, dV = P^T dO
    dS = c.unfold(c.fold(do_c) @ c.v.transpose(-1, -2)) * c.mask
    dq = c.unfold(dS.reshape(rows) @ c.k)
    dq_inter = do_c @ S_before.transpose(-1, -2)  # o += exp(b) q S_before
    dq = dq + (dq_inter if eb is None else dq_inter * eb)

    ds_late, end = split_late(None if late is None else late())
    if ds_late is not None:  # everything below needs the complete state gradient
        dS_after, ds_in = c.fold_late(dS_after, ds_in, ds_late, reverse=True)
        ds_in = ds_in if end is None else end.to(c.dtype)
        ds_out = ds_late if ds_out is None else ds_out.to(c.dtype) + ds_late.to(c.dtype)
    dk_h = dS.transpose(-1, -2) @ c.q  # per query head: the decay identity needs it
    P = (c.scores() * c.mask).reshape(rows)
    dv = P.transpose(-1, -2) @ c.fold(do_c)  # sums over the G heads sharing v
    # the states' share of dk, dv
    w = c.decay_to_end()
    vw = c.v.unsqueeze(3) if w is None else c.v.unsqueeze(3) * w[..., None]
    kw = c.k.unsqueeze(3) if w is None else c.k.unsqueeze(3) * w[..., None]
    dk_h = dk_h + vw @ dS_after.transpose(-1, -2)
    dv = dv + (kw @ dS_after).sum(dim=3)

    dG = None
    if g is not None and decay_grad:
        dG_c = (c.q * dq).sum(-1) - (c.k.unsqueeze(3) * dk_h).sum(-1)  # q.dq - k.dk per head
        dG = _unchunk_q(dG_c[..., None], c.T)[..., 0]
        if ds_out is not None:
            dG[:, -1] += (ds_out.to(c.dtype) * s_out.reshape(c.B, c.H, c.D, c.E)).sum((-1, -2))
    dq = _unchunk_q(dq * scale, c.T).to(q.dtype)
    dk = _unchunk_kv(dk_h.sum(dim=3), c.T).to(k.dtype)
    dv = _unchunk_kv(dv, c.T).to(v.dtype)
    return dq, dk, dv, dG, ds_in


def _cumsum_time(x: Tensor, reverse: bool = False) -> Tensor:
    """(Reverse) cumsum of [B, T, H] along T, computed with T innermost.

    On CUDA, torch.cumsum along a dim that is not innermost runs serially (pytorch#122170).
    """
    xt = x.transpose(1, 2).contiguous()
    if reverse:
        xt = xt.flip(-1)
    out = torch.cumsum(xt, dim=-1)
    if reverse:
        out = out.flip(-1)
    return out.transpose(1, 2).contiguous()  # custom-op outputs must match their fake's strides


def log_decay_grad(dG: Tensor, log_decay: Tensor) -> Tensor:
    """Gradient of the log-decay from dG: a reverse cumsum per token, summed for a per-head decay.

    For a per-head decay every a_t equals lambda, so dlambda = sum_t sum_{s>=t} dG_s. On a
    slice of a longer sequence this is the slice's share of the full gradient.
    """
    if log_decay.dim() == 1:  # sum_t sum_{s>=t} dG_s = sum_s (s + 1) dG_s: one weighted reduction
        steps = torch.arange(1, dG.shape[1] + 1, device=dG.device, dtype=dG.dtype)
        return torch.einsum("bth,t->h", dG, steps).to(log_decay.dtype)
    return _cumsum_time(dG, reverse=True).to(log_decay.dtype)


def _as(x: Tensor | None, dtype) -> Tensor | None:
    return None if x is None else x.to(dtype)
