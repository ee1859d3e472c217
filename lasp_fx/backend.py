"""The torch.compile backend "lasp": `torch.compile(model, backend="lasp", options={...})`.

A thin layer over `lasp_fx.compile.make_backend`, found through the `torch_dynamo_backends`
entry point and deliberately not registered at import, which would make dynamo's lookup fail
with "duplicate name: lasp" (docs/design.md §7). Mark the sequence length dynamic for long
inputs: the detector's probes then replay a short prefix instead of the whole input.
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
