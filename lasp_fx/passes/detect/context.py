"""What every pattern family needs to know about the graph it searches."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cached_property

import torch
from torch.fx import GraphModule, Node

from lasp_fx.passes.emit import kv_heads
from lasp_fx.passes.graph import SOURCE_NAME, module_path, shape, source_function, source_of
from lasp_fx.passes.match import Candidate, LinearAttentionMatch, NearMiss
from lasp_fx.passes.detect.probe import ProbeFailed, check_sides, fit_and_verify, region
from lasp_fx.passes.detect.values import Values


class Context:
    """A captured graph, its example inputs and the float64 values the probes start from."""

    def __init__(self, gm: GraphModule, example_inputs: list):
        self.gm = gm
        self.example_inputs = list(example_inputs)

    @cached_property
    def values(self) -> Values:
        return Values(self.gm, self.example_inputs)

    @cached_property
    def learnable(self) -> set[Node]:
        """Parameter nodes: get_attr of a parameter (export) or a Parameter placeholder (dynamo)."""
        params = dict(self.gm.named_parameters())
        out = set()
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for n, x in zip(placeholders, self.example_inputs):
            if isinstance(x, torch.nn.Parameter):
                out.add(n)
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and n.target in params:
                out.add(n)
        return out

    @cached_property
    def dynamic(self) -> set[Node]:
        """Nodes whose values change between calls or steps: parameters and user inputs (buffers
        and constants are taken as fixed)."""
        out = set(self.learnable)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for n, x in zip(placeholders, self.example_inputs):
            name = n.meta.get(SOURCE_NAME, n.name)
            if isinstance(x, torch.Tensor) and "_buffers_" not in name and "_constants_" not in name:
                out.add(n)  # a user input (SymInt sizes and buffers are not)
        return out

    def analyse(self, family: str, anchor: Node, fn, *args):
        """`fn(self, *args)`, or a near-miss at `anchor` when the analysis itself fails: a form
        the detector does not understand is reported and left alone, never a crash."""
        try:
            return fn(self, *args)
        except Exception as e:  # noqa: BLE001 - any failure here means "not proven": no rewrite
            first = (str(e).splitlines() or [""])[0][:200]
            return self.near_miss(family, anchor, f"lasp_fx could not analyse this form ({type(e).__name__}: {first})")

    def near_miss(self, family: str, node: Node, reason: str) -> NearMiss:
        where, code = source_of(node)
        fn = source_function(node)
        if fn and fn != "forward":  # a helper of a third-party file: its name says what it computes
            reason = f"{reason} (in {fn})"
        return NearMiss(family, where, code, module_path(node), reason, node)

    def verify(self, cand: Candidate) -> Candidate:
        """Check the region's inputs, then fit and verify numerically; raises ProbeFailed."""
        nodes = region(cand)
        check_sides(cand, nodes, self.dynamic)
        fitted, err = fit_and_verify(cand, self.values, nodes)
        return replace(fitted, error=err)

    def try_options(self, family: str, cands: list[Candidate]) -> Candidate | NearMiss:
        """The first candidate that verifies, or a near-miss with the first failure's reason."""
        reasons = []
        for cand in cands:
            try:
                return self.verify(replace(cand, family=family))
            except ProbeFailed as e:
                reasons.append(str(e))
        anchor = cands[0].anchor
        return self.near_miss(family, anchor, reasons[0] if reasons else "no decay source found")


def to_match(cand: Candidate) -> LinearAttentionMatch:
    """The user-facing description of a verified candidate."""
    where, code = source_of(cand.anchor)
    sq, sk, sv = shape(cand.q), shape(cand.k), shape(cand.v)
    heads = math.prod(cand.beta[1:])
    kv, _ = kv_heads(cand)
    d = cand.decay
    return LinearAttentionMatch(
        family=cand.family, source=where, code=code, module=module_path(cand.anchor),
        q=cand.q.name, k=cand.k.name, v=cand.v.name, out=cand.out.name,
        layouts={"q": cand.q_layout.describe(len(sq)), "k": cand.k_layout.describe(len(sk)),
                 "v": cand.v_layout.describe(len(sv))},
        heads=heads, kv_heads=kv,
        head_dim=sq[cand.q_layout.feat], value_dim=sv[cand.v_layout.feat], seq_len=cand.seq_len,
        scale=cand.scale * (cand.norm_a if cand.normalised else 1.0), decay=d.kind,
        decay_learnable=d.learnable, decay_from=None if d.node is None else d.node.name,
        normalised=cand.normalised, norm_eps=cand.norm_b, initial_state=None, max_error=cand.error,
        notes=list(cand.notes) + _form_notes(cand),
    )


def _form_notes(cand) -> list[str]:
    notes = []
    if cand.row_power:
        notes.append(f"rows scaled by (their sum of decays) ** -{cand.row_power:g} at global positions")
    if cand.den_steps:
        notes.append("normaliser " + " -> ".join(" ".join(str(x) for x in st if x is not None) for st in cand.den_steps))
    return notes

