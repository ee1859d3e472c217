"""Training steps end to end: a ~1B lightning LM through parallelize(), beside the same model written by hand.

    PYTHONPATH=. torchrun --standalone --nproc-per-node=1 bench/e2e.py --lengths 8192,32768,131072 \\
        --levers none,ckpt+chunkloss --json e2e.json --png e2e.png
    PYTHONPATH=. torchrun --standalone --nproc-per-node=1 bench/e2e.py --longest --levers ckpt+chunkloss
    PYTHONPATH=. torchrun --standalone --nproc-per-node=1 bench/e2e.py --tiny        # CPU (gloo), a dry run

Model: examples/models LightningLM, 16 layers, dim 2048, 16 heads, vocab 32000, mlp_ratio 2 (0.74B
parameters in the blocks), bf16 parameters, fused AdamW, batch 1; every variant starts from the same
weights and takes the same tokens. Variants (--variants):
    parallelize  lasp_fx.parallelize(model) (Inductor on CUDA), the model as written
    hand         the attention rewritten by hand around lasp_fx.linear_attention, torch.compile
    hand_blocks  the same, each block compiled on its own (with ckpt: checkpointed around its compiled
                 forward), the rest eager: the issue's by-hand reference for memory
    fla          the same with fla's chunk_simple_gla (fla-core), torch.compile
    compile      the model as written (a T x T decay mask: small T only) under torch.compile
    ulysses      the op by hand inside Ulysses' all-to-alls (bench/ulysses.py; every rank holds 1/P of the
                 sequence, heads divisible by P), torch.compile, parameter gradients summed over the ranks
                 (the baseline of sequence parallelism on several GPUs; on one it is `hand`)
With --dp N (parallelize only) the ranks form a (dp, sp) mesh: parallelize() splits each sequence over "sp"
and --data-parallel (DDP or FSDP2) keeps the N replicas, each on its own tokens, in step over "dp"; a row's
tokens/s and MFU count every replica's tokens.
Levers (--levers, joined by "+"): ckpt (non-reentrant checkpointing of every block: parallelize's
checkpoint="blocks", lasp_fx.memory.checkpoint_blocks for the others), chunkloss (the loss over
--loss-chunks slices of the vocabulary: ModelConfig.loss_chunks), tiles (each block's position-wise
layers on --tiles sequence tiles, each recomputed in backward: the norm + MLP, ModelConfig.mlp_tiles,
and the attention's projections and output gate, ModelConfig.proj_tiles), offload (saved
activations in host memory: parallelize's offload=True; the by-hand model through lasp_fx's compile
path without its rewrite), nolean (parallelize with Inductor's own fusion options, not
lasp_fx.memory.inductor_options: the A/B of that fix), none. fla's kernel runs outside the compiled
graphs (see _fla_kernel).
Per row: step ms (median of --steps after --warmup), tokens/s, MFU, peak memory (of the steps after
the first, and of the first on its own), the bytes autograd saved for backward in one step (the
step after the first; parameters not counted), the first step's seconds (compile and autotuning; later
lengths of one variant reuse its graph: the length is dynamic), the first step's loss (the same
weights and tokens for every variant: a cross-check of the forward) and the last step's (after the same
AdamW steps on the same tokens: of the gradients too).
An out-of-memory row is recorded as such and ends that variant's longer lengths. The JSON is
rewritten after every row, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

import lasp_fx
from examples.models import LightningLM, ModelConfig
from examples.models.common import in_tiles
from lasp_fx.cli.timing import environment, sync
from lasp_fx.memory import checkpoint_blocks

BIG = dict(vocab_size=32000, dim=2048, num_layers=16, num_heads=16, mlp_ratio=2)
TINY = dict(vocab_size=64, dim=64, num_layers=2, num_heads=4, mlp_ratio=2)
FLOPS = ("6 * N * T + 12 * L * H * Dk * Dv * T per step; N = every parameter but the embedding table "
         "(blocks, final norm, head), the recurrent form of linear attention's state update and "
         "read-out (fwd + bwd); recomputation by checkpointing is not counted")


def _log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


# ------------------------------------------------------------------------------ variants
def _by_hand(model, kernel):
    """Replace each attention's forward by the same math around a linear-attention kernel."""
    for block in model.blocks:
        attn = block.mixer

        def forward(x, position_ids=None, document_ids=None, attn=attn):
            q, k, v, u = in_tiles(attn._project, attn.tiles, x)  # [b, n, h, d] each
            o = kernel(q, k, v, -attn.slopes).flatten(2)
            return in_tiles(attn._output, attn.tiles, o, u)

        attn.forward = forward
    return model


def _lasp_kernel(q, k, v, log_decay):
    return lasp_fx.linear_attention(q, k, v, log_decay, scale=1.0)


def _fla_in_graph(q, k, v, log_decay):
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla(q, k, v, g_gamma=log_decay.float(), scale=1.0)[0]


# Outside dynamo's graph by default: once lasp_fx's backend exists (the parallelize rows), dynamo
# traces chunk_simple_gla as lasp_fx's op in every torch.compile of the process (passes/detect/
# known_kernels.py), and the row would time lasp_fx. --fla-in-graph traces it (only with --variants fla).
_fla_kernel = torch.compiler.disable(_fla_in_graph)


def _build(variant, levers, cfg, state, dev, dtype, a):
    """(model to call, module whose parameters train) for one variant and lever set."""
    mcfg = ModelConfig(**cfg, loss_chunks=a.loss_chunks if "chunkloss" in levers else 0,
                       mlp_tiles=a.tiles if "tiles" in levers else 0, proj_tiles=a.tiles if "tiles" in levers else 0)
    with dev:  # initialised on the device (fast), then overwritten: every variant starts from `state`
        model = LightningLM(mcfg).to(dtype)
    model.load_state_dict(state)
    ckpt, offload = "ckpt" in levers, "offload" in levers
    if variant == "parallelize":
        mesh = _mesh(a, dev)
        run = lasp_fx.parallelize(model, mesh=mesh, checkpoint="blocks" if ckpt else "none", offload=offload)
        return _data_parallel(run, mesh, a.data_parallel) if a.dp > 1 else run, model
    if variant == "hand_blocks":
        return _compiled_blocks(_by_hand(model, _lasp_kernel), ckpt, a.backend or _default_backend(dev)), model
    if variant == "fla":
        import fla  # noqa: F401 - ImportError: the row says fla is missing
    if variant == "ulysses":
        _by_hand(model, _ulysses_kernel)
    if variant in ("hand", "fla"):
        _by_hand(model, _lasp_kernel if variant == "hand" else _fla_in_graph if a.fla_in_graph else _fla_kernel)
    if ckpt:
        checkpoint_blocks(model)
    backend = a.backend or _default_backend(dev)
    if offload:  # lasp_fx's compile path without its rewrite: the same offload as parallelize's
        from lasp_fx.compile import make_backend

        backend = make_backend(None, compiler=backend, rewrite=lambda gm, _: gm, offload=True)
    if variant == "ulysses":
        return _ulysses_run(model, torch.compile(model, backend=backend)), model
    return torch.compile(model, backend=backend), model


def _mesh(a, dev):
    """None (every rank splits the sequence), or the (dp, sp) mesh of --dp."""
    if a.dp == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(dev.type, (a.dp, dist.get_world_size() // a.dp), mesh_dim_names=("dp", "sp"))


def _data_parallel(model, mesh, how):
    if how == "fsdp":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model, mesh=mesh["dp"])
    return torch.nn.parallel.DistributedDataParallel(model, process_group=mesh["dp"].get_group())


def _ulysses_kernel(q, k, v, log_decay):
    from ulysses import ulysses_attention  # bench/ulysses.py (this script's folder is on sys.path)

    return ulysses_attention(q, k, v, log_decay, scale=1.0)


def _ulysses_run(model, compiled):
    """Each rank runs its 1/P of the sequence; the loss's value is the global mean, its gradient this rank's
    share, and each parameter's gradient is summed over the ranks once accumulated."""
    P, r = dist.get_world_size(), dist.get_rank()
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: dist.all_reduce(p.grad))

    def run(ids, labels):
        n = ids.shape[1] // P
        part = compiled(ids[:, r * n:(r + 1) * n], labels=labels[:, r * n:(r + 1) * n]) / P
        total = part.detach().clone()
        dist.all_reduce(total)
        return part + (total - part.detach())

    return run


def _compiled_blocks(model, ckpt, backend):
    """Each block's forward compiled on its own (one graph serves every block: the parameters are
    its inputs), under non-reentrant checkpointing with ckpt; the embedding and the loss eager."""
    from torch.utils.checkpoint import checkpoint

    compiled = torch.compile(_block_forward, backend=backend)

    def run(block, x):
        torch._dynamo.maybe_mark_dynamic(x, 1)  # the length: one graph for every length, as the others
        return compiled(block, x)

    def forward(x, position_ids=None, document_ids=None, block=None):  # unpacked rows: no positions, no documents
        return checkpoint(run, block, x, use_reentrant=False) if ckpt else run(block, x)

    for block in model.blocks:
        block.forward = functools.partial(forward, block=block)
    return model


def _block_forward(block, x):
    return type(block).forward(block, x)


def _default_backend(dev):
    return "inductor" if dev.type == "cuda" else "aot_eager"  # as parallelize's "auto"


def _flops_per_step(model, cfg, T):
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embed."))
    d = cfg["dim"] // cfg["num_heads"]
    return 6 * n * T + 12 * cfg["num_layers"] * cfg["num_heads"] * d * d * T, n


# ------------------------------------------------------------------------------ one row
def _is_oom(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _batch(T, vocab, dev, rank_seed=0):
    gen = torch.Generator().manual_seed(1234 + rank_seed)
    ids = torch.randint(0, vocab, (1, T + 1), generator=gen)
    return ids[:, :-1].contiguous().to(dev), ids[:, 1:].contiguous().to(dev)  # labels: the next tokens


def _row(run, model, opt, T, cfg, dev, steps, warmup, variant, dp=1):
    """Time `steps` training steps at length T (after `warmup`); the first is timed on its own. With dp
    replicas, each takes its own tokens."""
    ids, labels = _batch(T, cfg["vocab_size"], dev, rank_seed=dist.get_rank() // (dist.get_world_size() // dp))
    if variant != "parallelize":  # parallelize marks the length dynamic itself
        torch._dynamo.maybe_mark_dynamic(ids, 1)
        torch._dynamo.maybe_mark_dynamic(labels, 1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, first_loss, saved = [], None, None
    for i in range(1 + warmup + steps):
        sync(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if i == min(1, warmup + steps):  # a step after the first (a warm-up one if any): compiled already
            saved = _SavedBytes(model)
            with saved:
                loss = run(ids, labels=labels)
        else:
            loss = run(ids, labels=labels)
        loss.backward()
        opt.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
        last_loss = float(loss.detach())  # the last step's, once the loop ends
        if i == 0:
            first_loss = float(loss.detach())
            if dev.type == "cuda":  # the first step's peak holds compile and autotuning buffers too
                first_peak = torch.cuda.max_memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
        del loss
    flops, n = _flops_per_step(model, cfg, T)
    flops *= dp
    ms = statistics.median(times[1 + warmup:]) * 1e3 if steps else None
    world = dist.get_world_size()
    out = {"first_step_s": round(times[0], 2), "step_ms": ms and round(ms, 2), "loss": first_loss,
           "last_loss": last_loss, "tokens_per_s": ms and round(dp * T / ms * 1e3), "params_N": n}
    if dp > 1:
        out["dp"] = dp
    if saved is not None:
        out["saved_gib"] = round(saved.bytes / 2**30, 3)
        out["saved_kib_per_token_layer"] = round(saved.bytes / 2**10 / T / cfg["num_layers"], 2)
    if ms and dev.type == "cuda":
        out["mfu"] = round(flops / (ms * 1e-3) / (world * _ARGS.peak_tflops * 1e12), 4)
    if dev.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if steps + warmup else None
        out["first_step_peak_gib"] = round(first_peak / 2**30, 2)
    return out


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the distinct storages autograd saves for backward inside the block, parameters aside
    (a checkpoint's own hooks hide what it recomputes: what it keeps, its inputs, is counted)."""

    def __init__(self, model):
        self.bytes, self._seen = 0, {_storage(p).data_ptr() for p in model.parameters()}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t):
        storage = _storage(t)
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return t


def _storage(t):
    """A tensor's storage; a DTensor's (FSDP2's sharded parameters) is its local shard's."""
    return (t.to_local() if hasattr(t, "to_local") else t).untyped_storage()


def _free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


class _Variant:
    """One variant and lever set: built on first use, kept (its graph serves every length) until closed."""

    def __init__(self, variant, levers, cfg, state, dev, dtype, a):
        self.args = (variant, levers, cfg, state, dev, dtype, a)
        self.run = self.model = self.opt = None

    def step(self, T, steps, warmup):
        variant, levers, cfg, state, dev, dtype, a = self.args
        with _lean_off() if "nolean" in levers else contextlib.nullcontext():  # compiles happen in calls
            if self.run is None:
                self.run, self.model = _build(variant, levers, cfg, state, dev, dtype, a)
                self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=dev.type == "cuda")
            return _row(self.run, self.model, self.opt, T, cfg, dev, steps, warmup, variant,
                        a.dp if variant == "parallelize" else 1)

    def after_oom(self):
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)

    def close(self):
        self.run = self.model = self.opt = None
        torch._dynamo.reset()
        _free(self.args[4])


def _lean_off():
    """parallelize() compiled with Inductor's own fusion, buffer reuse and sums (lasp_fx.memory's
    lean-backward options off; offload, if asked for, stays)."""
    from unittest import mock

    import lasp_fx.memory

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(lasp_fx.memory, "_LEAN_BACKWARD", {}))
    stack.enter_context(mock.patch.object(lasp_fx.memory, "sum_in_order", lambda graph: 0))
    return stack


def _attempt(v, T, steps, warmup, dev):
    """One row, with an out-of-memory or any other error recorded instead of raised."""
    error = None
    try:
        return v.step(T, steps, warmup)
    except Exception as e:  # noqa: BLE001 - recorded in the row; the run goes on
        error = {"oom": True} if _is_oom(e) else {"error": f"{type(e).__name__}: {str(e)[:800]}"}
        del e  # the traceback holds the step's tensors
    v.after_oom()
    _free(dev)
    return error


# ------------------------------------------------------------------------------ modes
def _table(a, cfg, state, dev, dtype, record, save):
    lengths = [int(x) for x in a.lengths.split(",")]
    for variant, levers, v in _variants(a, cfg, state, dev, dtype, record["rows"]):
        stop = None
        for T in lengths:
            row = {"variant": variant, "levers": levers, "tokens": T}
            if stop or time.monotonic() > _DEADLINE:
                row["skipped"] = stop or "time budget (--budget) spent"
            elif variant == "compile" and T > a.compile_max:
                row["skipped"] = f"the T x T model above --compile-max {a.compile_max}"
            else:
                # in the JSON while it runs: a run killed from outside (a call's time limit) still says where
                record["rows"].append({**row, "running": f"since {time.strftime('%H:%M:%S')}"})
                save()
                record["rows"].pop()
                row.update(_attempt(v, T, a.steps, a.warmup, dev))
                if row.get("oom"):
                    stop = f"out of memory at {T} tokens"
                elif "error" in row:
                    stop = "error at a shorter length"
            record["rows"].append(row)
            _log(json.dumps(row))
            save()


def _longest(a, cfg, state, dev, dtype, record, save):
    """Double the length until a step runs out of memory, then bisect between the last two."""
    for variant, levers, v in _variants(a, cfg, state, dev, dtype, record["longest"]):
        ok, bad, T, tries = None, None, a.start, []

        def attempt(T):
            r = _attempt(v, T, 1, 0, dev)
            tries.append({"tokens": T, **r})
            _log(json.dumps({"variant": variant, "levers": levers, "tokens": T, **r}))
            save()
            return "oom" not in r and "error" not in r

        while T <= a.max_tokens and time.monotonic() < _DEADLINE:
            if not attempt(T):
                bad = T
                break
            ok, T = T, 2 * T
        while ok and bad and bad - ok > max(a.granularity, ok // 8) and time.monotonic() < _DEADLINE:
            mid = (ok + bad) // 2 // a.granularity * a.granularity
            if mid in (ok, bad):
                break
            if attempt(mid):
                ok = mid
            else:
                bad = mid
        best = next((t for t in tries if t["tokens"] == ok), {})
        record["longest"].append({"variant": variant, "levers": levers, "longest_tokens": ok,
                                  "first_oom_tokens": bad, "at_longest": best, "tries": tries})
        save()


def _variants(a, cfg, state, dev, dtype, rows):
    """(variant, levers, _Variant) for every lever set and variant asked for; a skipped one is
    recorded in `rows` instead, and each is closed once its caller moves on."""
    for levers in a.levers.split(","):
        for variant in a.variants.split(","):
            skip = _skip(variant, levers, dev, a)
            if skip:
                rows.append({"variant": variant, "levers": levers, "skipped": skip})
                continue
            v = _Variant(variant, levers, cfg, state, dev, dtype, a)
            try:
                yield variant, levers, v
            finally:
                v.close()


def _skip(variant, levers, dev, a) -> str | None:
    if a.dp > 1 and variant != "parallelize":
        return "--dp: parallelize only"
    if variant not in ("parallelize", "ulysses") and dist.get_world_size() > 1:
        return "one GPU only (the by-hand variants do not split the sequence)"
    if "nolean" in levers and variant != "parallelize":
        return "nolean turns off an option of parallelize()'s compile only"
    if "offload" in levers:
        from lasp_fx.memory import offload_available

        if not offload_available():
            return f"torch {torch.__version__} has no activation offloading in AOTAutograd"
        if variant == "fla":
            return "offload goes through lasp_fx's backend, which would trace fla's kernel as lasp_fx's op"
    if variant == "fla":
        if dev.type != "cuda":
            return "fla's Triton kernels need a GPU"
        try:
            import fla  # noqa: F401
        except ImportError:
            return "fla-core is not installed"
    return None


def _plot(record, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib missing: no plot")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for r in record["rows"]:
        if r.get("tokens_per_s"):
            series.setdefault(f"{r['variant']} [{r['levers']}]", []).append(r)
    for name, rs in series.items():
        ax1.plot([r["tokens"] for r in rs], [r["tokens_per_s"] / 1e3 for r in rs], "o-", label=name)
        if rs[0].get("peak_gib") is not None:
            ax2.plot([r["tokens"] for r in rs], [r["peak_gib"] for r in rs], "o-", label=name)
    for ax, label in ((ax1, "K tokens/s"), (ax2, "peak GiB (max_memory_allocated)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"{record['model']['desc']} on {record['card']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    global _ARGS, _DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8192,32768,131072", help="global tokens per step, comma-separated")
    ap.add_argument("--levers", default="none,ckpt+chunkloss", help='lever sets, comma-separated; "+" joins levers')
    ap.add_argument("--variants", default=None, help="default: parallelize,hand,hand_blocks,fla,compile (--longest: parallelize)")
    ap.add_argument("--dp", type=int, default=1, help="data-parallel replicas (a (dp, sp) mesh; parallelize only)")
    ap.add_argument("--data-parallel", choices=["ddp", "fsdp"], default="fsdp", help="with --dp: how replicas sync")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (median)")
    ap.add_argument("--warmup", type=int, default=1, help="steps after the first before timing")
    ap.add_argument("--loss-chunks", type=int, default=32, help="vocabulary slices of the chunked loss")
    ap.add_argument("--tiles", type=int, default=8, help="sequence tiles of each block's position-wise layers (lever tiles)")
    ap.add_argument("--compile-max", type=int, default=4096, help="longest T for the T x T model as written")
    ap.add_argument("--backend", default=None, help="torch.compile backend of the by-hand variants "
                    "(default: inductor on CUDA, aot_eager on CPU, as parallelize)")
    ap.add_argument("--fla-in-graph", action="store_true", help="let dynamo trace fla's kernel call "
                    "(valid only when no parallelize row runs in the same process: --variants fla)")
    ap.add_argument("--longest", action="store_true", help="find the longest length that trains a step")
    ap.add_argument("--start", type=int, default=65536, help="--longest: first length")
    ap.add_argument("--max-tokens", type=int, default=4 * 2**20, help="--longest: stop doubling here")
    ap.add_argument("--granularity", type=int, default=32768, help="--longest: bisection step")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds after which no new row starts")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="dim 64, 2 layers, vocab 64, lengths 64,128 (CPU dry run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    a = _ARGS = ap.parse_args()
    _DEADLINE = time.monotonic() + a.budget
    a.variants = a.variants or ("parallelize" if a.longest else "parallelize,hand,hand_blocks,fla,compile")
    if a.fla_in_graph and a.variants != "fla":
        ap.error("--fla-in-graph needs --variants fla: lasp_fx's backend would trace fla's kernel as its own op")
    cuda = torch.cuda.is_available() and not a.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if dist.get_world_size() % a.dp:
        ap.error(f"--dp {a.dp} does not divide the {dist.get_world_size()} ranks")
    cfg = dict(TINY if a.tiny else BIG)
    if a.tiny:
        a.lengths = "64,128" if a.lengths == ap.get_default("lengths") else a.lengths
        a.loss_chunks = 4 if a.loss_chunks == ap.get_default("loss_chunks") else a.loss_chunks
        a.tiles = 2 if a.tiles == ap.get_default("tiles") else a.tiles
        a.start, a.max_tokens, a.granularity = 64, min(a.max_tokens, 256), 32
        a.compile_max = max(a.compile_max, 128)
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    state = {k: v.to(dtype) for k, v in LightningLM(ModelConfig(**cfg)).state_dict().items()}
    desc = (f"LightningLM {cfg['num_layers']} layers, dim {cfg['dim']}, {cfg['num_heads']} heads, "
            f"vocab {cfg['vocab_size']}, {a.dtype}, B=1, fused AdamW")
    record = {**environment(dev), "world_size": dist.get_world_size(),
              "model": {**cfg, "desc": desc, "loss_chunks": a.loss_chunks},
              "flops": FLOPS, "peak_tflops": a.peak_tflops, "steps": a.steps, "warmup": a.warmup,
              "rows": [], "longest": []}

    def save():
        if dist.get_rank() == 0 and a.json:
            with open(a.json, "w") as f:
                json.dump(record, f, indent=1, default=str)

    _log(desc, "|", record["card"], "| world", dist.get_world_size())
    (_longest if a.longest else _table)(a, cfg, state, dev, dtype, record, save)
    save()
    if dist.get_rank() == 0 and a.png and record["rows"]:
        _plot(record, a.png)
    dist.destroy_process_group()


_ARGS = None
_DEADLINE = float("inf")

if __name__ == "__main__":
    main()
