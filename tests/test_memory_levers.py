"""Memory levers under parallelize(): activation checkpointing (both forms, or checkpoint="blocks"), host
offload of saved activations, sequence tiles of the MLP and of the projections, and the vocabulary-chunked loss compute the
single-process function on every rank; checkpointing keeps only the blocks' inputs, offload moves them to
the host and back, and tiles that mix positions are refused."""

import pytest
import torch

from examples.models import LightningLM, ModelConfig
from tests.helpers import workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import run_spawned

T = 24  # 24, 12 and 8 tokens per rank


def _batch(vocab=64, seed=0):
    return workers_parallel.lm_batch(2, T, vocab, seed)


def _case(model, options=None, compiler="aot_eager", **kwargs):
    ids, labels = _batch()
    # aot_eager: AOTAutograd's partitioner runs and honours the checkpoint tags, as Inductor's does;
    # "eager" (faster) where only what the graph computes is under test
    return dict(model=model, ids=ids, labels=labels, kwargs=kwargs, options={"compiler": compiler, **(options or {})})


CASES = {
    "user_ckpt": _case("tests.helpers.models:CheckpointedLM"),
    "user_ckpt_reentrant": _case("tests.helpers.models:CheckpointedLM", use_reentrant=True),
    "blocks_offload": _case("examples.models:LightningLM", {"checkpoint": "blocks", "offload": True}),
    "chunked_loss": _case("examples.models:LightningLM", compiler="eager", cfg=ModelConfig(loss_chunks=3)),  # 22+21+21
    "gated_blocks_chunked": _case("examples.models:GatedLM", {"checkpoint": "blocks"},  # halo conv recomputed
                                  cfg=ModelConfig(loss_chunks=2)),
    "hybrid_blocks_chunked": _case("examples.models:HybridLM", {"checkpoint": "blocks"}, compiler="eager",
                                   cfg=ModelConfig(num_layers=4, loss_chunks=5)),  # a softmax layer too
    "tiles_blocks": _case("examples.models:LightningLM", {"checkpoint": "blocks"},  # nested checkpoints
                          cfg=ModelConfig(mlp_tiles=3, proj_tiles=3, loss_chunks=2)),
    "mlp_tiles": _case("examples.models:RetNetLM", compiler="eager", cfg=ModelConfig(mlp_tiles=3)),  # 3+3+2 at P3
}
# each case on one or two group sizes, every size on checkpointing: CPU time stays small
BY_WORLD = {
    1: ["user_ckpt_reentrant", "blocks_offload"],
    2: ["user_ckpt", "chunked_loss", "gated_blocks_chunked", "tiles_blocks"],
    3: ["user_ckpt_reentrant", "blocks_offload", "hybrid_blocks_chunked", "mlp_tiles"],
}


@pytest.fixture(scope="module")
def references():
    return {name: workers_parallel.single(case) for name, case in CASES.items()}


@pytest.mark.parametrize("world_size", sorted(BY_WORLD), ids=lambda p: f"P{p}")
def test_levers_match_one_process(world_size, references):
    names = BY_WORLD[world_size]
    results = run_spawned(workers_parallel.parallel, world_size, [CASES[n] for n in names], timeout=900)
    for rank, per_rank in enumerate(results):
        for name, got in zip(names, per_rank):
            ref, where = references[name], f"{name} rank {rank}/{world_size}"
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, f"{where}: loss"
            assert set(got["grads"]) == set(ref["grads"]), f"{where}: different parameters got gradients"
            for p, g in ref["grads"].items():
                err = rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g))
                assert err <= 1e-10, f"{where}: gradient of {p} off by {err:.2e}"


@pytest.mark.parametrize("cfg", [dict(loss_chunks=3), dict(mlp_tiles=3, proj_tiles=4)], ids=["chunked_loss", "tiles"])
def test_levers_leave_the_function(cfg):
    """Each lever computes the model as written: loss and every gradient, in float64."""
    ids, labels = _batch()
    grads, losses = [], []
    for levers in ({}, cfg):
        torch.manual_seed(0)
        model = LightningLM(ModelConfig(**levers)).double()
        loss = model(ids, labels=labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    assert rel_rms(losses[1], losses[0]) <= 1e-13
    for a, b in zip(*grads):
        assert rel_rms(b, a) <= 1e-12


def test_nested_compile_regions_are_inlined():
    """A torch.compiler.nested_compile_region called per checkpointed tile: the lasp backend (static
    shapes) inlines its calls and computes the model as written, loss and every gradient in float64.
    (With a dynamic length dynamo itself fails there: tests/test_bad_inputs.py's nested-region row.)"""
    from lasp_fx.compile import make_backend
    from tests.helpers.models import CompiledRegionLM

    ids, labels = _batch(vocab=32)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = CompiledRegionLM().double()
        torch._dynamo.reset()
        run = torch.compile(model, backend=make_backend(None, compiler="aot_eager"), dynamic=False) if compiled \
            else model
        loss = run(ids, labels)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss0, grads0), (loss1, grads1) = results
    assert rel_rms(loss1, loss0) <= 1e-13
    for a, b in zip(grads0, grads1):
        assert rel_rms(b, a) <= 1e-12


def _saved_per_token(model) -> float:
    """Tensor elements autograd keeps per extra token, for the model under the lasp backend."""
    from lasp_fx.compile import make_backend

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=make_backend(None, compiler="aot_eager"), fullgraph=True)
    counts = []
    for n in (96, 192):
        ids, labels = torch.randint(0, 64, (1, n)), torch.randint(0, 64, (1, n))
        torch._dynamo.mark_dynamic(ids, 1)
        torch._dynamo.mark_dynamic(labels, 1)
        compiled(ids, labels).backward()  # compiles; the second call below is what is counted
        total = [0]

        def pack(t):
            total[0] += 0 if isinstance(t, torch.nn.Parameter) else t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = compiled(ids, labels)
        loss.backward()
        counts.append(total[0])
    return (counts[1] - counts[0]) / 96


def test_checkpointed_blocks_keep_only_their_inputs():
    # Per token, checkpointing must keep each block's input, the final hidden state and its norm
    # and the log-softmax: (layers + 2) * dim + vocab. Without the checkpoint tags on the nodes
    # the rewrite inserts, the op's inputs and outputs would be kept too (~389 here).
    from tests.helpers.models import CheckpointedLM

    torch.manual_seed(0)
    cfg = ModelConfig()
    per_token = _saved_per_token(CheckpointedLM())
    assert per_token <= (cfg.num_layers + 2) * cfg.dim + cfg.vocab_size + 8, per_token
    assert _saved_per_token(LightningLM()) > 4 * per_token  # the check can fail: without checkpointing


def _peak_bytes(fn) -> int:
    """The most CPU memory live at once while fn() runs, above what was live before (the profiler's
    allocation and free events, in order: Inductor's generated code allocates outside dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def _step_peak_per_token(model, compiler) -> float:
    """Peak bytes of a training step (forward and backward) per extra token, under the lasp backend."""
    from lasp_fx.compile import make_backend

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=make_backend(None, compiler=compiler), fullgraph=True)
    peaks = []
    for n in (256, 512):
        ids, labels = workers_parallel.lm_batch(1, n, model.cfg.vocab_size)
        torch._dynamo.mark_dynamic(ids, 1)
        torch._dynamo.mark_dynamic(labels, 1)
        compiled(ids, labels).backward()  # compiles (once: the length is dynamic)
        peaks.append(_peak_bytes(lambda: compiled(ids, labels).backward()))
    return (peaks[1] - peaks[0]) / 256


def test_inductor_keeps_the_checkpointed_backward_lean(monkeypatch):
    # In one graph of the whole model, Inductor fused the vocabulary-chunked loss's gradient terms for
    # the hidden states (one per slice) into one kernel, all alive at once: a step's peak per token was
    # ~8x what AOTAutograd's plan needs here (aot_eager runs that plan as it is), and the 1B model
    # on a GPU peaked at ~2x its blocks compiled one by one. lasp_fx.memory.inductor_options keeps
    # Inductor at or below the plan (slack: 1.25x the plan, plus one hidden state per token).
    from lasp_fx import memory
    from lasp_fx.memory import checkpoint_blocks
    from tests.helpers.models import ChunkedLossLM

    def model():
        torch.manual_seed(0)
        m = ChunkedLossLM()
        checkpoint_blocks(m)
        return m

    hidden = 4 * ChunkedLossLM().cfg.dim  # bytes of one float32 hidden state
    planned = _step_peak_per_token(model(), "aot_eager")
    lean = _step_peak_per_token(model(), "inductor")
    assert lean <= 1.25 * planned + hidden, (lean / hidden, planned / hidden)
    monkeypatch.setattr(memory, "inductor_options", lambda gm, offload=False: {})
    fused = _step_peak_per_token(model(), "inductor")
    assert fused > 3 * planned, (fused / hidden, planned / hidden)  # the check can fail


def test_inductor_options_only_with_checkpoints():
    import torch._inductor.config

    from lasp_fx.capture import capture_dynamo_graph
    from lasp_fx.memory import _LEAN_BACKWARD, inductor_options
    from tests.helpers.models import CheckpointedLM

    assert set(_LEAN_BACKWARD) <= set(torch._inductor.config._config), "an option this torch's Inductor lacks"
    graphs = {}
    for name, m in (("plain", LightningLM()), ("checkpointed", CheckpointedLM())):
        def grab(gm, example_inputs, name=name):
            graphs[name] = capture_dynamo_graph(gm, example_inputs)
            return gm.forward

        torch._dynamo.reset()
        torch.compile(m, backend=grab, fullgraph=True)(*_batch())
    assert inductor_options(graphs["plain"]) == {}
    assert set(inductor_options(graphs["plain"], offload=True)) == {"joint_custom_pre_pass"}
    options = inductor_options(graphs["checkpointed"])
    passes = options.pop("joint_custom_pre_pass")
    assert options == _LEAN_BACKWARD and [p.__name__ for p in passes.passes] == ["sum_in_order"]


def test_sums_in_order_are_the_same_sums():
    # sum_in_order on the joint graph: the loss's 32 slice gradients (and the label term) for the hidden
    # states add one at a time through lasp_fx::add_in_order, the residual blocks' two-term sums stay,
    # and the step computes bit for bit what it computed before.
    import functorch.compile
    from torch._dynamo.backends.common import aot_autograd

    from lasp_fx import memory
    from tests.helpers.models import ChunkedLossLM

    counts = []

    def backend(rewrite):
        def partition(joint, joint_inputs, **kwargs):
            if rewrite:
                counts.append(memory.sum_in_order(joint.graph))
                joint.recompile()
            return functorch.compile.min_cut_rematerialization_partition(joint, joint_inputs, **kwargs)

        def nop(g, _):
            return functorch.compile.make_boxed_func(g.forward)

        return aot_autograd(fw_compiler=nop, bw_compiler=nop, partition_fn=partition)

    results = []
    for rewrite in (False, True):
        torch.manual_seed(0)
        model = ChunkedLossLM(vocab=96, dim=8).double()
        memory.checkpoint_blocks(model)
        ids, labels = _batch(vocab=96)
        torch._dynamo.reset()
        loss = torch.compile(model, backend=backend(rewrite), fullgraph=True)(ids, labels)
        loss.backward()
        results.append([loss.detach(), *(p.grad for p in model.parameters())])
    assert counts == [32], counts
    for before, after in zip(*results):
        assert torch.equal(before, after)


def test_checkpoint_option_is_checked():
    from lasp_fx.config import ParallelConfig
    from lasp_fx.memory import checkpoint_blocks

    with pytest.raises(ValueError, match="checkpoint must be one of"):
        ParallelConfig(checkpoint="layers")
    with pytest.raises(ValueError, match="has no nn.ModuleList of blocks"):
        checkpoint_blocks(torch.nn.Linear(2, 2))
    model = LightningLM()
    blocks = checkpoint_blocks(model)
    wrapped = [b.forward for b in blocks]
    assert checkpoint_blocks(model) == blocks and [b.forward for b in blocks] == wrapped  # not wrapped twice


def test_offload_moves_the_saved_blocks_inputs_to_the_host_and_back(monkeypatch):
    import functorch.compile

    from lasp_fx.compile import make_backend
    from lasp_fx.memory import offload_available
    from tests.helpers.models import CheckpointedLM

    if not offload_available():
        pytest.skip("this torch has no activation offloading in AOTAutograd")
    graphs, boxed = [], functorch.compile.make_boxed_func
    monkeypatch.setattr(functorch.compile, "make_boxed_func", lambda f: graphs.append(f.__self__.graph) or boxed(f))
    torch.manual_seed(0)
    model = CheckpointedLM().double()
    ids, labels = _batch()
    for t in (ids, labels):  # as parallelize does: values whose size grows with the length are offloaded
        torch._dynamo.mark_dynamic(t, 1)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=make_backend(None, compiler="aot_eager", offload=True), fullgraph=True)
    compiled(ids, labels).backward()
    forward, backward = ([n.name for n in g.nodes if n.target is torch.ops.prims.device_put.default] for g in graphs)
    # the input of every block (the embedding's output feeds block 0) leaves in forward, comes back in backward
    assert "cpu_offload_embedding" in forward and len(forward) >= ModelConfig().num_layers, forward
    reloaded = sorted(n.replace("gpu_reload_", "") for n in backward)
    assert reloaded == sorted(n.replace("cpu_offload_", "") for n in forward)
    with pytest.raises(ValueError, match="offload=True needs compiler"):
        make_backend(None, compiler="eager", offload=True)


@pytest.mark.parametrize("name", ["LightningLM", "RetNetLM", "GatedLM", "HybridLM"])
def test_no_value_in_the_rewritten_graph_grows_faster_than_the_length(name, monkeypatch):
    # The T x T masks of the models as written must be gone once the attention is the op: a value
    # quadratic in T (one 128K x 128K mask is 32 GiB in bf16) would decide the longest length.
    import examples.models
    import lasp_fx.compile as compile_module

    graphs = []
    real = compile_module._compile
    monkeypatch.setattr(compile_module, "_compile", lambda g, *a: graphs.append(g) or real(g, *a))
    torch.manual_seed(0)
    model = getattr(examples.models, name)(ModelConfig(num_layers=4, loss_chunks=2)).double()
    ids, labels = _batch()
    for t in (ids, labels):
        torch._dynamo.mark_dynamic(t, 1)
    torch._dynamo.reset()
    torch.compile(model, backend=compile_module.make_backend(None, compiler="eager"), fullgraph=True)(ids, labels)
    (graph,) = graphs
    for node in graph.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and isinstance(val.numel(), torch.SymInt):
            expr = val.numel().node.expr
            small, large = (int(expr.subs({s: 2**k for s in expr.free_symbols})) for k in (20, 21))
            assert large <= 2.01 * small, f"{node.name} ({node.target}): {expr} elements"


TILE_REFUSALS = {
    "TileCumsum": r"aten.cumsum.default at .*models.py:\d+ .*mixes positions inside a tile",
    "TileReversed": r"aten.cat.default at .*models.py:\d+ .*does not put the tiles of the sequence back in their order",
    "TileDropped": r"aten.tensor_split.sections at .*models.py:\d+ .*leaves pieces out",
    "TileShifted": r"at .*models.py:\d+ .*mixes two tiles of the sequence",
}


def test_tiles_that_mix_positions_are_refused():
    import re

    ids = _batch(vocab=32)[0]
    cases = [dict(_case(f"tests.helpers.models:{n}", compiler="eager"), ids=ids) for n in TILE_REFUSALS]
    messages = run_spawned(workers_parallel.parallel_errors, 2, cases, timeout=600)
    for rank_messages in messages:
        for pattern, message in zip(TILE_REFUSALS.values(), rank_messages):
            assert message is not None and re.search(pattern, message), message
