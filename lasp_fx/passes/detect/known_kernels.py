"""Known kernels: direct calls of fla / lasp linear-attention kernels, traced as lasp_fx's op (no pattern).

Their Triton kernels cannot be traced, so each is registered with
`torch.compiler.substitute_in_graph` as the same function computed by `lasp_fx.linear_attention`
(for packages the user has already imported, for the process); the report lists the calls
(`direct_calls`), and options the op does not cover raise NotImplementedError at trace time.
Packed `cu_seqlens` are the op's own (ops/documents.py), also under parallelize(), except with
per-sequence states (the op carries one: into the first document, out of the last).
"""

from __future__ import annotations

import importlib
import sys

import torch

_REGISTERED: set[str] = set()  # mirrors dynamo's own (process-wide) substitution table


def _op(q, k, v, log_decay, scale, initial_state, cu_seqlens=None):
    from lasp_fx.attention import linear_attention

    return linear_attention(q, k, v, log_decay, scale=scale, initial_state=initial_state, output_final_state=True,
                            cu_seqlens=cu_seqlens)


def _refuse(name, cu_seqlens=None, states=False, **flags):
    if cu_seqlens is not None and states:
        raise NotImplementedError(
            f"lasp_fx: {name} with cu_seqlens and initial_state / output_final_state (one state per sequence) is "
            "not supported: lasp_fx's op carries one state (into the first document, out of the last)"
        )
    for flag, value in flags.items():
        if value:
            raise NotImplementedError(f"lasp_fx: {name} with {flag}=True is not supported")


def _simple_gla(name):
    def substitute(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                   cu_seqlens=None, **kwargs):
        _refuse(name, cu_seqlens, initial_state is not None or output_final_state, reverse=kwargs.get("reverse"),
                state_v_first=kwargs.get("state_v_first"), both_gates=g is not None and g_gamma is not None)
        o, state = _op(q, k, v, g if g is not None else g_gamma, scale, initial_state, cu_seqlens)
        return o, (state if output_final_state else None)

    return substitute


def _retention(name):
    def substitute(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kwargs):
        _refuse(name, cu_seqlens, initial_state is not None or output_final_state, reverse=kwargs.get("reverse"))
        heads = torch.arange(q.shape[2], dtype=torch.float32, device=q.device)
        g_gamma = torch.log(1 - 2.0 ** (-5.0 - heads))  # RetNet's per-head decays, as fla fixes them
        o, state = _op(q, k, v, g_gamma, scale, initial_state, cu_seqlens)
        return o, (state if output_final_state else None)

    return substitute


def _linear_attn(name):
    def substitute(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True,
                   cu_seqlens=None, **kwargs):
        _refuse(name, cu_seqlens, initial_state is not None or output_final_state,
                tuple_initial_state=isinstance(initial_state, tuple))
        if not normalize:
            o, state = _op(q, k, v, None, scale, initial_state, cu_seqlens)
            return o, (state if output_final_state else None)
        if initial_state is not None or output_final_state:
            raise NotImplementedError(f"lasp_fx: {name}(normalize=True) with states is not supported")
        # o / (scale * q . cumsum(k) + 1e-10): the denominator is the op with v = 1 (docs/design.md §2)
        ones = v.new_ones(*v.shape[:-1], 1)
        out, _ = _op(q, k, torch.cat([v, ones], dim=-1), None, scale, None, cu_seqlens)
        return out[..., :-1] / (out[..., -1:] + 1e-10), None

    return substitute


def _lightning_attn(q, k, v, ed):
    """lasp.lightning_attn: [B, H, T, D] layout, decay exp(-ed) per head, no scale."""
    o, _ = _op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), -ed.reshape(-1).float(), 1.0, None)
    return o.transpose(1, 2)


_KNOWN = {
    "fla": [
        ("fla.ops.simple_gla", "chunk_simple_gla", _simple_gla),
        ("fla.ops.simple_gla", "fused_recurrent_simple_gla", _simple_gla),
        ("fla.ops.retention", "chunk_retention", _retention),
        ("fla.ops.retention", "fused_chunk_retention", _retention),
        ("fla.ops.retention", "fused_recurrent_retention", _retention),
        ("fla.ops.linear_attn", "chunk_linear_attn", _linear_attn),
        ("fla.ops.linear_attn", "fused_chunk_linear_attn", _linear_attn),
        ("fla.ops.linear_attn", "fused_recurrent_linear_attn", _linear_attn),
    ],
    "lasp": [("lasp", "lightning_attn", lambda name: _lightning_attn)],
}


def register_known_kernels() -> list[str]:
    """Register substitutes for the known kernels of already-imported packages; returns all registered."""
    for package, entries in _KNOWN.items():
        if package not in sys.modules:
            continue
        for module_name, fn_name, make in entries:
            qualified = f"{module_name}.{fn_name}"
            if qualified in _REGISTERED:
                continue
            try:
                fn = getattr(importlib.import_module(module_name), fn_name)
            except (ImportError, AttributeError):
                continue
            torch.compiler.substitute_in_graph(fn, skip_signature_check=True)(make(qualified))
            _REGISTERED.add(qualified)
    return sorted(_REGISTERED)


def direct_calls(gm: torch.fx.GraphModule) -> list:
    """Matches for lasp_fx ops already in the graph: direct `lasp_fx.linear_attention` calls and
    known kernels traced through their substitutes (the rewrite leaves both as they are)."""
    from lasp_fx.passes.graph import module_path, shape, source_of
    from lasp_fx.passes.match import LinearAttentionMatch

    op = torch.ops.lasp_fx.linear_attention.default
    found = []
    for node in gm.graph.find_nodes(op="call_function", target=op):
        if "lasp_fx_match" in node.meta:  # made by the rewrite: reported with its pattern
            continue
        q, k, v, log_decay, initial_state, scale = node.args[:6]
        where, code = source_of(node)
        trace = node.meta.get("stack_trace") or ""
        kernel = next((name for name in sorted(_REGISTERED) if name.rsplit(".", 1)[-1] + "(" in trace), None)
        sq, sk, sv = shape(q), shape(k), shape(v)
        decay = "none" if log_decay is None else ("const" if len(shape(log_decay)) == 1 else "gate")
        found.append(LinearAttentionMatch(
            family="kernel call" if kernel else "direct op call", source=where, code=code,
            module=module_path(node), q=q.name, k=k.name, v=v.name, out=node.name,
            layouts={"q": "[B,T,H,D]", "k": "[B,T,H,D]", "v": "[B,T,H,D]"}, heads=sq[2], kv_heads=sk[2],
            head_dim=sq[3], value_dim=sv[3], seq_len=sq[1], scale=float(scale), decay=decay,
            decay_learnable=False, decay_from=None if log_decay is None else log_decay.name,
            normalised=False, norm_eps=0.0, initial_state=None if initial_state is None else initial_state.name,
            max_error=0.0, notes=[f"{kernel} traced as lasp_fx.linear_attention"] if kernel else [],
        ))
    return found
