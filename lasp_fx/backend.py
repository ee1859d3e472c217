"""The torch.compile backend "lasp": `torch.compile(model, backend="lasp", options={...})`.

A thin layer over `lasp_fx.compile.make_backend` (capture, rewrite, shard, compile), found by
name through the `torch_dynamo_backends` entry point in pyproject.toml, so it works in a fresh
process that never imported lasp_fx. It is deliberately NOT registered with
`torch._dynamo.register_backend(name="lasp")` at import: dynamo's entry-point lookup registers
the same name again and fails with "duplicate name: lasp" (STACK.md section 1.3).

    compiled = torch.compile(model, backend="lasp")                         # one device
    compiled = torch.compile(model, backend="lasp", dynamic=True)           # one graph for all lengths
    compiled = torch.compile(model, backend="lasp", options={"mesh": mesh})  # LASP over the mesh
    loss = compiled(*lasp_fx.shard_batch((ids, labels), mesh))              # each rank: its slice

Sequence lengths. With static shapes (the default for the first call, or `dynamic=False`)
each new length recompiles; by default dynamo turns the length symbolic at the second distinct
length and reuses that graph from then on. With `dynamic=True` or
`torch._dynamo.mark_dynamic(x, seq_dim)` one graph serves every length from the start, and the
detector's numerical probes replay the graph on a 40-token prefix instead of the whole input:
for long sequences (one T x T float64 matrix of 128K tokens is 128 GiB) mark the length dynamic.
"""

from __future__ import annotations

from lasp_fx.compile import make_backend
from lasp_fx.config import Compiler, choose

OPTIONS = {
    "compiler": '"inductor" (default on CUDA), "aot_eager" (default on CPU) or "eager"',
    "seq_dim": "dimension of the sequence in the tensor inputs (default 1)",
    "mesh": "a DeviceMesh or ProcessGroup to split the sequence over (default: none, one device)",
    "method": 'state exchange across the mesh: "auto" (default), "ring" or "allgather"',
}


def lasp_backend(gm, example_inputs, options: dict | None = None, mode: str | None = None):
    """The dynamo backend "lasp": rewrite linear attention into the lasp_fx op, then compile.

    Args:
        gm: the FX graph dynamo captured.
        example_inputs: its inputs (parameters included).
        options: from `torch.compile(..., options={...})`: "compiler" ("inductor" default on
            CUDA, "aot_eager" default on CPU, or "eager"), "seq_dim" (default 1), "mesh" (a
            DeviceMesh or ProcessGroup: the graph is also made sequence-parallel over it; every
            rank passes its contiguous slice of the sequence, e.g. from `lasp_fx.shard_batch`,
            which marks the sequence dim dynamic) and "method" ("auto", "ring", "allgather").
        mode: torch.compile's mode; only "default" (or None) is supported.

    Returns:
        The compiled callable dynamo runs in place of `gm`.

    Raises:
        ValueError: an unknown option or value, or a mesh without a dynamic sequence dim.
    """
    opts = _check_options(options or {}, mode)
    spec = None
    if opts.get("mesh") is not None:
        from lasp_fx.distributed.mesh import SequenceMesh

        spec = SequenceMesh.resolve(opts["mesh"]).spec(opts.get("method", "auto"))
    backend = make_backend(spec, seq_dim=opts.get("seq_dim", 1), compiler=opts.get("compiler", "auto"))
    return backend(gm, example_inputs)


def _check_options(options: dict, mode: str | None) -> dict:
    if mode not in (None, "default"):
        raise ValueError(
            f'torch.compile(backend="lasp") does not support mode={mode!r}: leave mode unset; '
            'options={"compiler": "inductor"} compiles the rewritten graph with Inductor'
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in OPTIONS.items())
        raise ValueError(f'unknown option(s) {unknown} for backend="lasp"; the options are {known}')
    if "compiler" in options:
        choose('backend="lasp": options["compiler"]', options["compiler"], Compiler)
    seq_dim = options.get("seq_dim", 1)
    if not isinstance(seq_dim, int) or isinstance(seq_dim, bool) or seq_dim < 0:
        raise ValueError(f'backend="lasp": options["seq_dim"] must be a non-negative int, got {seq_dim!r}')
    if "method" in options and options.get("mesh") is None:
        raise ValueError('backend="lasp": options["method"] needs options["mesh"] (the group to split the sequence over)')
    return options
