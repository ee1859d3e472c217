"""torch.compile(backend="lasp") against eager on the example models, on every device: outputs, loss, every
parameter gradient."""

import collections
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from examples.models import MODELS, ModelConfig
from lasp_fx.backend import lasp_backend
from lasp_fx.numerics import rel_rms

# name -> (layers, how many of them are linear attention: the op must run that often). One layer keeps
# the compile short; the hybrid needs four (its 4th is causal softmax attention, left alone).
LAYERS = {"lightning": (1, 1), "retnet": (1, 1), "linear": (1, 1), "gated": (1, 1), "hybrid": (4, 3)}
T = 45  # longer than the detector's 40-token probe prefix, not a multiple of the 64-token chunk


def _batch(device, t=T, vocab=64, seed=0):
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same ids on every device
    ids, labels = torch.randint(0, vocab, (2, t), generator=gen), torch.randint(0, vocab, (2, t), generator=gen)
    return ids.to(device), labels.to(device)


def _model(name, device):
    torch.manual_seed(0)
    return MODELS[name](ModelConfig(num_layers=LAYERS[name][0])).double().to(device)


def _loss_and_grads(fn, model, ids, labels):
    loss = fn(ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss, grads


def _op_calls(fn) -> collections.Counter:
    """How often each lasp_fx op runs in `fn()`, counting only the outermost dispatch of a call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()

    def outermost(e):
        parent = e.cpu_parent
        while parent is not None and parent.name != e.name:
            parent = parent.cpu_parent
        return parent is None

    return collections.Counter(e.name for e in prof.profiler.function_events
                               if e.name.startswith("lasp_fx::") and outermost(e))


def _check_against_eager(name, device, options, tol=1e-12):
    """Loss and every parameter gradient through backend="lasp" equal eager's, and the op ran."""
    torch._dynamo.reset()
    model = _model(name, device)
    ids, labels = _batch(device)
    ref_loss, ref_grads = _loss_and_grads(model, model, ids, labels)
    compiled = torch.compile(model, backend=lasp_backend, fullgraph=True, options=options)
    loss, grads = _loss_and_grads(compiled, model, ids, labels)
    assert rel_rms(loss, ref_loss) <= tol, f"{name}: loss"
    assert grads.keys() == ref_grads.keys(), f"{name}: different parameters got gradients"
    for p, g in ref_grads.items():
        assert rel_rms(grads[p], g) <= tol, f"{name}: gradient of {p} off by {rel_rms(grads[p], g):.2e}"
    # The numbers alone cannot tell a rewrite from no rewrite (both are exact in float64): the op must run.
    calls = _op_calls(lambda: compiled(ids, labels=labels).backward())
    n = LAYERS[name][1]
    assert calls["lasp_fx::linear_attention"] == n and calls["lasp_fx::linear_attention_backward"] == n, calls


@pytest.mark.parametrize("compiler", ["aot_eager", "eager"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_lasp_backend_matches_eager(name, compiler, device):
    _check_against_eager(name, device, {"compiler": compiler})


@pytest.mark.parametrize("dynamic, graphs", [(True, 1), (None, 2), (False, 3)],
                         ids=["dynamic", "automatic", "static"])
def test_new_lengths_reuse_a_dynamic_graph_or_recompile(dynamic, graphs, device):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _model("retnet", device)
    compiled = torch.compile(model, backend=lasp_backend, fullgraph=True, dynamic=dynamic,
                             options={"compiler": "eager"})
    for t in (T, 17, 130):  # longer and shorter than the 40-token probe prefix, and over two chunks
        ids, _ = _batch(device, t, seed=t)
        assert rel_rms(compiled(ids), model(ids)) <= 1e-12, f"T={t}"
    # automatic: the second length makes the length symbolic, the third reuses that graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_a_static_length_is_probed_whole_when_only_the_batch_is_dynamic(device):
    torch._dynamo.reset()
    model = _model("retnet", device)
    ids, _ = _batch(device)
    torch._dynamo.mark_dynamic(ids, 0)  # the batch is symbolic, the 45 tokens are not: no 40-token probes
    compiled = torch.compile(model, backend=lasp_backend, fullgraph=True, options={"compiler": "eager"})
    assert rel_rms(compiled(ids), model(ids)) <= 1e-12
    assert _op_calls(lambda: compiled(ids))["lasp_fx::linear_attention"] == 1


def test_inductor_smoke(device):
    _check_against_eager("linear", device, {"compiler": "inductor"}, tol=1e-10)


@pytest.mark.parametrize("options, message", [
    ({"compiler": "tvm"}, r'options\["compiler"\] must be one of'),
    ({"seq_dims": 1}, r"unknown option\(s\) \['seq_dims'\]"),
    ({"seq_dim": -1}, r"non-negative int"),
    ({"method": "ring"}, r'options\["method"\] needs options\["mesh"\]'),
], ids=["compiler", "unknown-key", "seq-dim", "method-without-mesh"])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        lasp_backend(None, [], options=options)


def test_mode_is_refused_with_a_hint():
    with pytest.raises(ValueError, match='mode=\'max-autotune\'.*options=\\{"compiler": "inductor"\\}'):
        lasp_backend(None, [], mode="max-autotune")


_FRESH = textwrap.dedent("""
    import sys, torch
    from examples.models import LinearLM
    device = sys.argv[1]
    torch.manual_seed(0)
    model = LinearLM().double().to(device)
    ids = torch.randint(0, 64, (2, 45)).to(device)
    ref = model(ids)
    assert "lasp_fx" not in sys.modules
    out = torch.compile(model, backend="lasp", fullgraph=True, options={"compiler": "eager"})(ids)
    assert "lasp_fx.backend" in sys.modules
    print(float((out - ref).norm() / ref.norm()))
""")


def test_entry_point_works_in_a_fresh_process(device):
    names = [ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")]
    if "lasp" not in names:
        pytest.skip('no "lasp" torch_dynamo_backends entry point: install the package (pip install -e .)')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    done = subprocess.run([sys.executable, "-c", _FRESH, device], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= 1e-12


def test_a_static_length_too_long_to_replay_is_refused_with_the_fix(monkeypatch, device):
    """A static graph is replayed at its own length; past the limit the backend refuses before it
    allocates, naming the value and the fix, and the same model compiled dynamic=True works."""
    from lasp_fx.passes.detect import values

    # 215 KiB: at 200 tokens the 4 x 200 x 200 decay mask (1.2 MiB) is over, at the 40-token prefix
    # of a dynamic graph the largest value (2 x 40 x 256, 160 KiB) is not
    monkeypatch.setattr(values, "_LARGEST_GIB", 2e-4)
    ids, labels = _batch(device, t=200)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"(?s)replaying the graph in float64.*lightning.py:\d+.*dynamic=True"):
        torch.compile(_model("lightning", device), backend="lasp", dynamic=False)(ids)
    torch._dynamo.reset()
    model = _model("lightning", device)
    got = torch.compile(model, backend="lasp", dynamic=True)(ids, labels=labels)
    assert rel_rms(got, model(ids, labels=labels)) <= 1e-10
    torch._dynamo.reset()
