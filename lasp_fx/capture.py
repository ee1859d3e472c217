"""Capture: a user model and example inputs -> a functional pre-dispatch ATen FX graph.

Two entries give the same IR, so one detector serves both (docs/design.md §6): `capture` (torch.export,
non-strict, + run_decompositions({})) and `capture_dynamo_graph` (what the "lasp" backend
receives, re-traced with make_fx(pre_dispatch)). Failures raise CaptureError with the reason,
the user's source line and a hint.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from lasp_fx.passes.canonical import drop_dead_mutations, drop_noop_slices, functionalize_inplace
from lasp_fx.passes.graph import SOURCE_NAME, is_library_path, short_path
from lasp_fx.passes.no_trace import caches_restored
from lasp_fx.passes.stack_frames import full_stack_traces



class CaptureError(RuntimeError):
    """The model could not be captured as one graph.

    Attributes: reason (what failed), source ("file.py:LINE" in the user's code or None),
    code (that line), hint (what to change).
    """

    def __init__(self, reason: str, source: str | None, code: str, hint: str):
        self.reason, self.source, self.code, self.hint = reason, source, code, hint
        where = f"\n  at {source}: {code}" if source else ""
        super().__init__(f"cannot capture the model: {reason}{where}\n  hint: {hint}")


@dataclass
class Captured:
    """A captured graph: `gm` (shares the model's Parameters, keeps FQNs and the module tree)
    and the flat example inputs its placeholders take."""

    gm: GraphModule
    example_inputs: list = field(default_factory=list)
    method: str = "export"


def capture(model: torch.nn.Module, *args, method: str = "export", dynamic_seq_dim: int | None = None,
            **kwargs) -> Captured:
    """Capture `model(*args, **kwargs)` as a functional pre-dispatch ATen graph.

    Args:
        model: any nn.Module.
        *args, **kwargs: example inputs (short sequences suffice; the graph is specialised to
            their shapes).
        method: "export" (torch.export, non-strict; returns a GraphModule usable as a module)
            or "dynamo" (torch.compile front end with fullgraph=True; parameters become inputs).
        dynamic_seq_dim: with "export", this dimension of every input tensor that has it is one
            symbolic length (`seq_dynamic_shapes`): the graph serves every length.

    Raises:
        CaptureError: with the reason, the user's source line and a hint.
    """
    from lasp_fx.passes.detect.known_kernels import register_known_kernels

    register_known_kernels()  # fla / lasp kernel calls trace as the op (dynamo route)
    if method == "export":
        return _capture_export(model, args, kwargs, dynamic_seq_dim)
    if dynamic_seq_dim is not None:
        raise ValueError("dynamic_seq_dim needs method='export'")
    if method == "dynamo":
        return _capture_dynamo(model, args, kwargs)
    raise ValueError(f"method must be 'export' or 'dynamo', got {method!r}")


def seq_dynamic_shapes(model, args, kwargs, seq_dim: int):
    """torch.export's `dynamic_shapes` making dim `seq_dim` of every input tensor that has it one
    symbolic length "seq" (the convention of parallelize's seq_dim: ids, labels and masks alike)."""
    seq = torch.export.Dim("seq", min=2)
    shapes = torch.export.ShapesCollection()
    for t in pytree.tree_leaves((tuple(args), kwargs or {})):
        if isinstance(t, torch.Tensor) and t.dim() > seq_dim:
            shapes[t] = {seq_dim: seq}
    return shapes.dynamic_shapes(model, tuple(args), kwargs or None)


def _capture_export(model, args, kwargs, seq_dim: int | None = None) -> Captured:
    try:
        dynamic = None if seq_dim is None else seq_dynamic_shapes(model, args, kwargs, seq_dim)
        with full_stack_traces(), caches_restored(model):  # lines in third-party helpers; no fake tensor cached
            ep = torch.export.export(model, tuple(args), kwargs or None, dynamic_shapes=dynamic, strict=False)
        ep = ep.run_decompositions({})  # functional, keeps matmul / einsum / tril whole
    except Exception as e:  # noqa: BLE001 - re-raised as CaptureError with the cause attached
        raise explain(e, dynamic=seq_dim is not None) from e
    gm = ep.module()
    if seq_dim is not None:  # whole-length slices stay in a symbolic graph, between a cumsum and its mask
        drop_noop_slices(gm)
    flat = [x for x in pytree.tree_leaves((tuple(args), kwargs or {}))]
    return Captured(gm, flat, "export")


def _capture_dynamo(model, args, kwargs) -> Captured:
    graphs: list[Captured] = []

    def backend(gm, example_inputs):
        graphs.append(Captured(capture_dynamo_graph(gm, example_inputs), list(example_inputs), "dynamo"))
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    try:
        compiled(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise explain(e) from e
    if len(graphs) != 1:
        raise CaptureError(f"dynamo produced {len(graphs)} graphs", None, "", "call the model once with fullgraph=True")
    return graphs[0]


def capture_dynamo_graph(gm: GraphModule, example_inputs: list) -> GraphModule:
    """Re-trace a dynamo graph to functional pre-dispatch ATen, keeping source locations.

    Args:
        gm: the torch-level graph a torch.compile backend receives.
        example_inputs: its example inputs (real or fake tensors; parameters included).
    """
    inline_regions(gm)
    fake_mode = torch._guards.detect_fake_mode(example_inputs) or torch._subclasses.FakeTensorMode()
    with fake_mode, torch.fx.traceback.preserve_node_meta():
        fake = [fake_mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
        out = make_fx(torch.fx.Interpreter(gm).run, pre_dispatch=True)(*fake)
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    for node, name in zip((n for n in out.graph.nodes if n.op == "placeholder"), names):
        node.meta[SOURCE_NAME] = name  # e.g. L_self_buffers_gamma_: tells buffers from user inputs
    return drop_dead_mutations(drop_noop_slices(functionalize_inplace(out)))


def inline_regions(gm: GraphModule) -> GraphModule:
    """Inline activation-checkpoint regions (dynamo's tag_activation_checkpoint) and nested compile
    regions (torch.compiler.nested_compile_region's invoke_subgraph) into the graph.

    The detector and the sharding pass see one flat graph; the inlined nodes of a checkpoint keep
    meta["recompute"] and meta["ac_graph_id"], which the re-trace carries onto the ATen nodes and
    AOTAutograd's min-cut partitioner reads: those activations are still recomputed in backward.
    A nested compile region only asks for its body to be compiled once: inlined, it computes the
    same (each call is compiled on its own, as without the decorator).
    """
    from torch.utils.checkpoint import CheckpointPolicy

    checkpoint = torch.ops.higher_order.tag_activation_checkpoint
    subgraph = torch.ops.higher_order.invoke_subgraph
    region = 0
    while True:
        calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (checkpoint, subgraph)]
        if not calls:
            break
        for call in calls:
            operands = call.args[1:] if call.target is checkpoint else call.args[2:]  # (body, identifier, *args)
            if call.target is subgraph:  # inside a checkpoint region (inlined already): its nodes join it
                rid = call.meta.get("ac_graph_id")
            elif "ac_graph_id" in call.meta:
                # A region nested in another (tiles inside a checkpointed block) joins its region: with an id
                # of its own, the partitioner would save every value the outer region passes into it.
                rid = call.meta["ac_graph_id"]
            else:
                region += 1
                rid = region
            body = getattr(gm, call.args[0].target)
            env = dict(zip(body.graph.find_nodes(op="placeholder"), operands))
            result = None
            with gm.graph.inserting_before(call):
                for node in body.graph.nodes:
                    if node.op == "placeholder":
                        continue
                    if node.op == "output":
                        result = torch.fx.node.map_arg(node.args[0], env.__getitem__)
                        continue
                    if node.op == "get_attr":  # a nested region's body: move it to the parent
                        name = f"{call.args[0].target}_{node.target}"
                        setattr(gm, name, getattr(body, node.target))
                        env[node] = gm.graph.get_attr(name)
                        continue
                    new = gm.graph.node_copy(node, env.__getitem__)
                    if rid is not None:
                        new.meta["recompute"] = CheckpointPolicy.PREFER_RECOMPUTE
                        new.meta["ac_graph_id"] = rid
                    env[node] = new
            for user in list(call.users):  # getitem(call, i) -> the body's i-th output
                user.replace_all_uses_with(result[user.args[1]])
                gm.graph.erase_node(user)
            body_attr = call.args[0]
            gm.graph.erase_node(call)
            if not body_attr.users:  # the last call of a nested compile region's body
                gm.graph.erase_node(body_attr)
    gm.graph.lint()
    gm.recompile()
    return gm


_HINTS = [
    (("data-dependent", "data dependent", "GuardOnDataDependent", "Could not guard"),
     "Python control flow on tensor values (a loop over a tensor, a branch on a value, a size set by "
     "nonzero()) cannot be captured: use torch.where / torch.cond / masks over every item, move the decision "
     "outside the model, or pick the library's vectorised variant of the layer (HF's MoE experts: "
     "experts_implementation=\"grouped_mm\" or \"batched_mm\", not \"eager\")"),
    (("item()", ".item", "_local_scalar_dense"),
     "avoid .item() / float(tensor) in forward: keep the value as a tensor"),
    (("Observed exception", "raised exception"),
     "the model's own code raised this on the traced inputs; under parallelize() those are each rank's "
     "slice of the sequence (the length over the ranks), so a rule on the length (a multiple of a window, "
     "a chunk or a block) must hold for the slice: pick a length whose slices meet it"),
    (("graph break", "Unsupported", "fullgraph"),
     "the model must trace as one graph: remove the graph break at that line (print, Python side "
     "effects, locks, unsupported library calls), or wrap that call in a torch.library custom op; set-up "
     "that runs on a first call can run before parallelize() (HF installs its output-capturing hooks under a "
     "lock on the first call asking for router logits or attentions: output_router_logits=False / "
     "output_attentions=False, or call the model once first)"),
    (("dynamic", "Constraints violated"),
     "pass example inputs with the shapes you will use; the graph is specialised to them"),
]


NESTED_REGION_HINT = ("torch's dynamo cannot yet trace a torch.compiler.nested_compile_region whose inputs have a "
                      "dynamic sequence length (parallelize's graphs have one): remove the decorator; lasp_fx "
                      "inlines each call of a region anyway (torch.compile(model, backend=\"lasp\") with static "
                      "shapes keeps it)")


FIXED_LENGTH_HINT = ("the model's code needs a fixed sequence length (a Python loop over the length or its "
                     "chunks, a branch on it, int() of a size): write it with tensor ops on symbolic sizes")


def explain(e: Exception, dynamic: bool = False) -> CaptureError:
    """A tracing failure (torch.export's, or dynamo's under fullgraph) as a CaptureError naming the
    deepest line of the user's (or third-party) code, the reason and what to do."""
    msg = str(e).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    # dynamo's graph breaks say what failed in one word and why on an "Explanation:" line; an
    # exception the model raised itself is named on a "raised exception" line
    why = next((ln.removeprefix("Explanation:").strip() for ln in lines if ln.startswith("Explanation:")), "")
    raised = next((ln.split("raised exception ", 1)[1] for ln in lines if "raised exception " in ln), "")
    if raised:
        first, why = f"the model's code raised {raised}", ""
    source, code = _user_line(e)
    fixed = dynamic and any(k in msg or k in type(e).__name__ for k in ("Constraints violated", "specializ", "Guard"))
    if in_nested_region(e):
        return CaptureError(f"{type(e).__name__} inside a nested compile region: {first[:300]}", source, code,
                            NESTED_REGION_HINT)
    hint = FIXED_LENGTH_HINT if fixed else next(
        (h for keys, h in _HINTS if any(k in msg or k in type(e).__name__ for k in keys)),
        "run torch.export.export(model, args, strict=False) to see the full error")
    return CaptureError(f"{type(e).__name__}: {first[:300]}" + (f" ({why[:300]})" if why else ""), source, code, hint)


def in_nested_region(e: BaseException) -> bool:
    """Whether dynamo failed while tracing a torch.compiler.nested_compile_region (invoke_subgraph)."""
    frames = traceback.extract_tb(e.__traceback__)
    cause = e.__cause__ or e.__context__
    if cause is not None:
        frames += traceback.extract_tb(cause.__traceback__)
    return any(f.filename.endswith(os.path.join("variables", "invoke_subgraph.py")) for f in frames)


def _user_line(e: BaseException) -> tuple[str | None, str]:
    """The deepest frame in the user's code: from dynamo's recorded stack, the traceback, or
    'File "...", line N' text in the message."""
    frames: list[traceback.FrameSummary] = list(getattr(e, "real_stack", None) or [])
    cur: BaseException | None = e
    while cur is not None and not frames:
        frames = list(traceback.extract_tb(cur.__traceback__))
        frames = [f for f in frames if _is_user(f.filename)] or []
        cur = cur.__cause__ or cur.__context__
    frames = [f for f in frames if _is_user(f.filename)]
    if frames:
        return f"{short_path(frames[-1].filename)}:{frames[-1].lineno}", (frames[-1].line or "").strip()
    for ln in str(e).splitlines():
        s = ln.strip()
        if s.startswith('File "') and ", line " in s:
            path = s[6:s.index('"', 6)]
            if _is_user(path):
                return f"{short_path(path)}:{s.split(', line ')[1].split(',')[0]}", ""
    return None, ""


def _is_user(path: str) -> bool:
    return not is_library_path(path)
