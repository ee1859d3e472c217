"""Where one training step's memory goes: the live tensors at its peak, by size, dtype, phase and source line.

    PYTHONPATH=. torchrun --standalone --nproc-per-node=1 bench/memory_breakdown.py            # CPU, small
    PYTHONPATH=. torchrun --standalone --nproc-per-node=1 bench/memory_breakdown.py --device cuda --big \\
        --tokens 1048576 --warm-tokens 16384 --tiles 4 --json mem.json

The model, levers and optimizer are bench/e2e.py's (`_build`: parallelize() with checkpoint="blocks",
offload, the chunked loss, mlp / proj tiles), in a process group of one. After --warm steps (compile,
optimizer state), one step is tracked. CPU: a TorchDispatchMode sees every op of the compiled
(aot_eager) graphs and follows each output storage until it is freed (the ops inside lasp_fx's
linear-attention op are not seen: its outputs are). CUDA: the caching allocator's history
(torch.cuda.memory._record_memory_history), replayed to the peak, which also catches Inductor's buffers
and an out-of-memory step (the live set at the failure). Sizes are given in units of one hidden state
[T, dim] in the model's dtype ("h"), which is how they carry over from a small model to the 1B one
when the ratios (mlp_ratio, vocab / loss_chunks / dim) are kept; --json adds the prediction for BIG.
"""

from __future__ import annotations

import argparse
import collections
import json
import linecache
import os
import sys
import time
import types
import weakref

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from e2e import BIG, _batch, _build  # bench/ is the script's directory
from examples.models import LightningLM, ModelConfig

SMALL = dict(vocab_size=1000, dim=256, num_layers=4, num_heads=4, mlp_ratio=2)  # vocab / 8 chunks / dim as BIG's


# ------------------------------------------------------------------------------ CPU: a dispatch-mode tracker
class _Live(TorchDispatchMode):
    """Every storage an op makes on `device`, alive until its last reference goes (a weakref callback)."""

    def __init__(self, device, names):
        super().__init__()
        self.device, self.names = device, names  # names: storage key -> parameter name (the block hint)
        self.live, self.cur, self.peak, self.at_peak, self.peak_live = {}, 0, 0, None, []
        self.phase, self.ops, self.last_param, self.phase_peak = "start", 0, None, {}
        self._refs = []

    @classmethod
    def is_infra_mode(cls):  # else dynamo runs the model eagerly under the mode (not the compiled graphs)
        return True

    def add(self, t, **info):
        st = t.untyped_storage()
        key = st._cdata
        if key in self.live or st.nbytes() == 0 or t.device.type != self.device.type:
            return
        rec = dict(bytes=st.nbytes(), dtype=str(t.dtype).replace("torch.", ""), shape=list(t.shape),
                   phase=self.phase, op_index=self.ops, **info)
        self.live[key] = rec
        self._refs.append(weakref.ref(st, lambda _, key=key: self._free(key)))
        self.cur += rec["bytes"]
        if self.cur > self.peak:
            self.peak, self.peak_live = self.cur, list(self.live.values())
            self.at_peak = dict(phase=self.phase, op_index=self.ops, block=self.last_param, op=info.get("op"),
                                src=info.get("src"), node=info.get("node"))
        where = f"{self.phase} {self.last_param or ''}".strip() if self.phase == "backward" else self.phase
        self.phase_peak[where] = max(self.phase_peak.get(where, 0), self.cur)

    def _free(self, key):
        rec = self.live.pop(key, None)
        if rec is not None:
            self.cur -= rec["bytes"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for a in tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor) and a.untyped_storage()._cdata in self.names:
                self.last_param = _block_of(self.names[a.untyped_storage()._cdata])
        node, src = _fx_source()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t, op=str(func.overloadpacket.__name__), node=node, src=src)
        return out


def _block_of(name):
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def _fx_source():
    """(the FX node's line, the model source line it came from) of the op running now, from the
    generated graph code's frame and the `# File:` comment FX writes above each node."""
    f = sys._getframe(2)
    while f is not None and not f.f_code.co_filename.startswith("<eval_with_key>"):
        f = f.f_back
    if f is None:
        return None, _user_frame()
    name, line = f.f_code.co_filename, f.f_lineno
    node = linecache.getline(name, line).strip().split(";")[0][:120]
    for i in range(line, max(line - 40, 0), -1):
        text = linecache.getline(name, i).strip()
        if text.startswith("# File:"):
            return node, _short(text[len("# File:"):].strip())
    return node, None


def _user_frame():
    f = sys._getframe(3)
    while f is not None:
        name = f.f_code.co_filename
        if "/torch/" not in name and name != __file__ and "python3" not in name:
            return f"{os.path.relpath(name)}:{f.f_lineno} in {f.f_code.co_name}"
        if "/torch/optim/" in name:
            return f"torch/optim/{os.path.basename(name)}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back
    return None


def _short(src):
    src = src.replace(os.getcwd() + "/", "")
    return src[:160]


# ------------------------------------------------------------------------------ CUDA: the allocator's history
def _cuda_replay(snapshot, device, base, oom_size):
    """Replay the allocator's trace: (peak bytes above `base`, the blocks alive then, phase peaks)."""
    trace = snapshot["device_traces"][device.index or 0]
    live, cur, peak, peak_live, at_peak, phase, phase_peak = {}, 0, 0, [], None, "start", {}
    freed_on_request = any(e["action"] == "free_requested" for e in trace)
    for i, e in enumerate(trace):
        frames = e.get("frames") or []
        if e["action"] == "alloc" and any(fr["name"] == "_mark" for fr in frames):
            phase = _PHASES[e["size"] // _MARK_UNIT - 1]
            continue
        if e["action"] == "alloc":
            node, src = _inductor_source(frames)
            ph = "backward" if any(fr["name"] == "backward" and "autograd" in fr["filename"] for fr in frames) else phase
            live[e["addr"]] = dict(bytes=e["size"], dtype="?", shape=[], phase=ph, op_index=i, op=None, node=node, src=src)
            cur += e["size"]
            if cur > peak:
                peak, peak_live = cur, list(live.values())
                at_peak = dict(phase=ph, op_index=i, node=node, src=src)
            phase_peak[ph] = max(phase_peak.get(ph, 0), cur)
        elif e["action"] == ("free_requested" if freed_on_request else "free_completed"):
            rec = live.pop(e["addr"], None)
            cur -= rec["bytes"] if rec else 0
        elif e["action"] == "oom":
            oom_size = oom_size or e.get("size", 0)
    if oom_size:  # the failed request, on top of what was alive when it failed
        peak, peak_live = cur + oom_size, list(live.values()) + [
            dict(bytes=oom_size, dtype="?", shape=[], phase=phase, op_index=len(trace), node="(the failed request)",
                 src=None, op=None)]
        at_peak = dict(phase=phase, op_index=len(trace), node="out of memory here", src=None)
    return base + peak, peak_live, at_peak, {k: base + v for k, v in phase_peak.items()}


def _inductor_source(frames):
    """(the line of the generated code that allocated, the nearest source-node comment above it)."""
    for fr in frames:
        name = fr["filename"]
        if "torchinductor" in name or name.startswith("<eval_with_key>"):
            line = linecache.getline(name, fr["line"]).strip()[:120]
            for i in range(fr["line"], max(fr["line"] - 60, 0), -1):
                text = linecache.getline(name, i).strip()
                if text.startswith(("# Topologically Sorted Source Nodes", "# File:", "# Source Nodes")):
                    return line, text[:200]
            return line, None
    user = [fr for fr in frames if "/torch/" not in fr["filename"]]
    return None, (f"{user[0]['filename']}:{user[0]['line']} in {user[0]['name']}" if user else None)


_MATERIALIZED = {"mm", "addmm", "bmm", "cat", "embedding", "embedding_dense_backward", "device_put", "linear_attention",
                 "linear_attention_backward", "add_in_order", "sum", "full", "zeros", None}
_PHASES = ("zero_grad", "forward", "backward", "optimizer", "end")
_MARK_UNIT = 1 << 20


def _mark(device, phase, tracker):
    """Say where the step is: to the CPU tracker, and as a marker allocation in the CUDA trace."""
    if tracker is not None:
        tracker.phase = phase
    if device.type == "cuda":
        torch.empty((_PHASES.index(phase) + 1) * _MARK_UNIT, dtype=torch.uint8, device=device)


def _watch_offload(tracker, func, args, out):
    """prims.device_put to the host in forward (offload: a no-op on CPU) and back in backward (reload)."""
    if func is not torch.ops.prims.device_put.default or not isinstance(args[0], torch.Tensor):
        return
    rec = tracker.live.get(args[0].untyped_storage()._cdata)
    if rec is not None:
        rec.setdefault("offloaded_at", tracker.ops) if tracker.phase == "forward" else rec.setdefault("reloaded_at", tracker.ops)


# ------------------------------------------------------------------------------ the step
def _step(run, opt, ids, labels, device, tracker=None):
    _mark(device, "zero_grad", tracker)
    opt.zero_grad(set_to_none=True)
    _mark(device, "forward", tracker)
    loss = run(ids, labels=labels)
    _mark(device, "backward", tracker)
    loss.backward()
    _mark(device, "optimizer", tracker)
    if tracker is not None:  # which new storages are the parameters' gradients
        for name, p in tracker.params.items():
            if p.grad is not None and p.grad.untyped_storage()._cdata in tracker.live:
                tracker.live[p.grad.untyped_storage()._cdata]["grad_of"] = name
    opt.step()
    _mark(device, "end", tracker)
    return float(loss.detach())


def _tracked_cpu(run, model, opt, ids, labels, device):
    params = dict(model.named_parameters())
    names = {p.untyped_storage()._cdata: n for n, p in params.items()}
    tracker = _Live(device, names)
    tracker.params = params
    for n, p in params.items():
        tracker.add(p.detach(), category="parameter", param=n, src=n)
        for k, s in opt.state.get(p, {}).items():
            if isinstance(s, torch.Tensor):
                tracker.add(s, category="optimizer state", param=n if s.shape == p.shape else None, src=f"{n} {k}")
    for t in (ids, labels):
        tracker.add(t, category="inputs", src="ids / labels")
    dispatch = _Live.__torch_dispatch__

    def watching(self, func, types, args=(), kwargs=None):
        out = dispatch(self, func, types, args, kwargs)
        _watch_offload(self, func, args, out)
        return out

    tracker.__class__ = type("_LiveOffload", (_Live,), {"__torch_dispatch__": watching})
    with tracker:
        loss = _step(run, opt, ids, labels, device, tracker)
    return loss, tracker.peak, tracker.peak_live, tracker.at_peak, tracker.phase_peak


def _tracked_cuda(run, opt, ids, labels, device):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=2_000_000)
    loss, oom = None, 0
    try:
        loss = _step(run, opt, ids, labels, device)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - an out-of-memory step is what this is for; others re-raise
        import re

        if "out of memory" not in str(e).lower():
            raise

        m = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB)", str(e))
        oom = int(float(m.group(1)) * {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}[m.group(2)]) if m else 1
        print("out of memory:", str(e)[:400], flush=True)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, live, at, phases = _cuda_replay(snapshot, device, base, oom)
    live.insert(0, dict(bytes=base, dtype="?", shape=[], phase="before the step", op_index=-1, op=None, node=None,
                        src="allocated before the step: parameters, optimizer state, inputs", category="before"))
    at["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    at["out_of_memory"] = bool(oom)
    return loss, peak, live, at, phases


# ------------------------------------------------------------------------------ the breakdown
def _category(rec, at_peak):
    if rec.get("category"):
        return rec["category"]
    if rec.get("grad_of"):
        return "gradient (.grad)"
    if "offloaded_at" in rec and rec.get("reloaded_at", 1 << 62) > at_peak["op_index"]:
        return "offloaded (host on a GPU)"
    return {"forward": "kept from forward", "backward": "backward", "zero_grad": "before the step"}.get(
        rec["phase"], rec["phase"])


def _shape_text(rec, T, dim):
    if not rec["shape"]:
        return "-"
    dims = ["T" if s == T else "dim" if s == dim else str(s) for s in rec["shape"]]
    return "[" + ",".join(dims) + "]"


def _rows(live, at_peak, T, dim, unit):
    """The live storages at the peak grouped by (category, dtype, shape, source), largest first."""
    groups = collections.OrderedDict()
    for rec in live:
        cat = _category(rec, at_peak)
        src = rec.get("src") or rec.get("node") or rec.get("op") or "?"
        key = (cat, rec["dtype"], _shape_text(rec, T, dim), src if cat not in ("parameter", "optimizer state") else "-")
        g = groups.setdefault(key, dict(category=key[0], dtype=key[1], shape=key[2], src=key[3], count=0, bytes=0,
                                        phase=rec["phase"], node=rec.get("node")))
        g["count"] += 1
        g["bytes"] += rec["bytes"]
    rows = sorted(groups.values(), key=lambda g: -g["bytes"])
    for g in rows:
        g["h"] = round(g["bytes"] / unit, 3)
    return rows


def _predict(live, at_peak, model, T, dim, itemsize, lengths):
    """Peak bytes of the BIG model at `lengths` from the live set at the small model's peak: per-token
    tensors scale as T * dim, parameter-shaped ones as the BIG parameter of that name or shape."""
    with torch.device("meta"):
        big = dict(LightningLM(ModelConfig(**BIG)).named_parameters())
    small = dict(model.named_parameters())
    by_shape = {tuple(p.shape): n for n, p in small.items()}
    fixed, per_token, parts = 0, 0.0, collections.Counter()
    for rec in live:
        cat = _category(rec, at_peak)
        if cat == "offloaded (host on a GPU)":
            continue
        name = rec.get("param") or rec.get("grad_of") or by_shape.get(tuple(rec["shape"]))
        numel = 1
        for s in rec["shape"]:
            numel *= s
        if name and name in big and numel == small[name].numel():
            b = big[name].numel() * rec["bytes"] // max(numel, 1)
            if name.startswith("blocks."):  # one small block's stands for BIG's num_layers / num_layers blocks
                b = b * BIG["num_layers"] // len(model.blocks)
            fixed += b
            parts[cat + " (parameter-sized)"] += b
        elif T in rec["shape"] or (numel >= T and numel % T == 0):
            per_token += rec["bytes"] / T * BIG["dim"] / dim
            parts[cat + " (per token)"] += rec["bytes"] / (T * dim * itemsize)  # in h
        else:
            fixed += rec["bytes"]
            parts[cat + " (other)"] += rec["bytes"]
    return dict(fixed_gib=round(fixed / 2**30, 2), kib_per_token=round(per_token / 2**10, 2),
                h_per_token=round(per_token / (BIG["dim"] * itemsize), 2),
                peak_gib={str(n): round((fixed + per_token * n) / 2**30, 1) for n in lengths},
                parts={k: round(v, 3) if "per token" in k else round(v / 2**30, 3) for k, v in parts.items()},
                note="parts: per-token ones in h (hidden states [T, dim] in the model dtype), others in GiB at BIG")


def _print_table(rows, top, unit_name):
    print(f"{'category':<28}{'dtype':<10}{'shape':<18}{'n':>4}{'MiB':>10}{unit_name:>8}  source")
    for g in rows[:top]:
        print(f"{g['category'][:27]:<28}{g['dtype']:<10}{g['shape'][:17]:<18}{g['count']:>4}"
              f"{g['bytes'] / 2**20:>10.1f}{g['h']:>8.2f}  {str(g['src'])[:110]}")


def _init_group(device):
    if "RANK" not in os.environ:  # plain python: a group of one all the same
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29517"))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--big", action="store_true", help="e2e.py's BIG model (1B: 16 layers, dim 2048), not the small one")
    ap.add_argument("--dim", type=int, default=SMALL["dim"])
    ap.add_argument("--layers", type=int, default=SMALL["num_layers"])
    ap.add_argument("--heads", type=int, default=SMALL["num_heads"])
    ap.add_argument("--vocab", type=int, default=SMALL["vocab_size"])
    ap.add_argument("--tokens", type=int, default=8192, help="tokens of the tracked step")
    ap.add_argument("--warm-tokens", type=int, default=None, help="tokens of the untracked steps before (default: --tokens)")
    ap.add_argument("--warm", type=int, default=1, help="untracked steps first (compile, optimizer state)")
    ap.add_argument("--levers", default="ckpt+chunkloss+offload+tiles", help="as bench/e2e.py's --levers (one set)")
    ap.add_argument("--tiles", type=int, default=4, help="sequence tiles of the lever tiles (mlp and projections)")
    ap.add_argument("--proj-tiles", type=int, default=None, help="projection tiles alone (0: MLP tiles only, as before proj_tiles)")
    ap.add_argument("--loss-chunks", type=int, default=None, help="vocabulary slices (default: 32 with --big, else 8)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--predict", default="393216,524288,1048576", help="BIG lengths to predict the peak at (CPU)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = torch.device(a.device, 0) if a.device == "cuda" else torch.device("cpu")
    _init_group(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = dict(BIG) if a.big else dict(vocab_size=a.vocab, dim=a.dim, num_layers=a.layers, num_heads=a.heads,
                                       mlp_ratio=SMALL["mlp_ratio"])
    chunks = a.loss_chunks or (32 if a.big else 8)
    opts = types.SimpleNamespace(loss_chunks=chunks, tiles=a.tiles, backend=None, fla_in_graph=False)
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    with device:
        state = LightningLM(ModelConfig(**cfg)).to(dtype).state_dict()
    run, model = _build("parallelize", a.levers, cfg, state, device, dtype, opts)
    del state
    if a.proj_tiles is not None:  # read when parallelize traces the model, at its first call
        for block in model.blocks:
            block.mixer.tiles = a.proj_tiles
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    t0 = time.perf_counter()
    for _ in range(a.warm):
        _step(run, opt, *_batch(a.warm_tokens or a.tokens, cfg["vocab_size"], device), device)
    warm_s = time.perf_counter() - t0
    ids, labels = _batch(a.tokens, cfg["vocab_size"], device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        loss, peak, live, at, phases = _tracked_cuda(run, opt, ids, labels, device)
    else:
        loss, peak, live, at, phases = _tracked_cpu(run, model, opt, ids, labels, device)
    step_s = time.perf_counter() - t0
    T, dim, itemsize = a.tokens, cfg["dim"], torch.empty(0, dtype=dtype).element_size()
    unit = T * dim * itemsize
    rows = _rows(live, at, T, dim, unit)
    # what Inductor must materialize too (matmuls, cats, custom ops, what crosses forward -> backward): a
    # lower bound of the compiled peak; aot_eager also materializes the pointwise ops Inductor fuses
    made = [r for r in live if r.get("category") or r["phase"] != "backward" or r.get("op") in _MATERIALIZED]
    record = dict(materialized_at_peak_h=round(sum(r["bytes"] for r in made) / unit, 2), model=cfg, levers=a.levers, tiles=a.tiles, proj_tiles=a.proj_tiles, loss_chunks=chunks,
                  dtype=a.dtype, device=str(device), tokens=T, warm_s=round(warm_s, 1), step_s=round(step_s, 1),
                  loss=loss, torch=torch.__version__, peak_gib=round(peak / 2**30, 3), peak_h=round(peak / unit, 2),
                  at_peak=at, phase_peaks_h={k: round(v / unit, 2) for k, v in phases.items()},
                  by_category_h={}, rows=rows)
    for g in rows:
        record["by_category_h"][g["category"]] = round(record["by_category_h"].get(g["category"], 0) + g["h"], 3)
    if device.type == "cpu" and not a.big:
        lengths = [int(x) for x in a.predict.split(",")]
        record["prediction_big"] = _predict(live, at, model, T, dim, itemsize, lengths)
    print(f"{cfg} levers {a.levers} tiles {a.tiles} proj_tiles {a.proj_tiles} chunks {chunks} {a.dtype} "
          f"T={T} on {device}: loss {loss}, step {step_s:.1f} s (warm-up {warm_s:.1f} s)")
    print(f"peak {peak / 2**30:.3f} GiB = {peak / unit:.2f} h (h = one [T, dim] {a.dtype} = {unit / 2**20:.1f} MiB) at {at}")
    print(f"of which materialized under Inductor too (matmul, cat, custom op, saved): {record['materialized_at_peak_h']} h")
    print("peak per phase (h):", record["phase_peaks_h"])
    print("at the peak by category (h):", record["by_category_h"])
    _print_table(rows, a.top, "h")
    if "prediction_big" in record:
        print("BIG prediction:", json.dumps(record["prediction_big"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=1, default=str)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
