"""Is torch.cumsum along T of a [B, T, H] tensor the hidden cost of the decay paths on CUDA? (one GPU, ~20 s)

Times the scans the op uses (chunked.slice_cumdecay, chunked.log_decay_grad; both cumsum along dim 1
with the heads innermost) against scan-free / last-dim versions, and the primitives that call them
(triton fwd_correct, chunked bwd_correct, the whole op fwd+bwd with a per-head decay) as they are and
with the scans swapped by monkeypatching, checking that the results agree.
    PYTHONPATH=. python3 bench/records/2026-11-28_sp_cumsum/probe.py [--device cpu]
"""

import json
import sys
import time

import torch

import lasp_fx
from lasp_fx.ops import chunked
from lasp_fx.ops.triton import correct as tcorrect
from lasp_fx.testing.numerics import rel_rms

dev = "cpu" if "--device" in sys.argv and sys.argv[-1] == "cpu" else "cuda"
B, T, H, D = 1, (2048 if dev == "cpu" else 32768), 16, 128


def ms(f):
    if dev == "cuda":
        from triton.testing import do_bench

        return do_bench(f, return_mode="median")
    f()
    t0 = time.perf_counter()
    for _ in range(3):
        f()
    return (time.perf_counter() - t0) / 3 * 1e3


def fast_slice_cumdecay(g, B, T, H, dtype):
    if g is None:
        return None
    if g.dim() == 1:  # per head: G_t = (t + 1) * lambda, no scan
        t = torch.arange(1, T + 1, device=g.device, dtype=dtype)
        return (t[None, :, None] * g.to(dtype)[None, None, :]).expand(B, T, H)
    return torch.cumsum(g.to(dtype).transpose(1, 2).contiguous(), -1).transpose(1, 2)


def fast_log_decay_grad(dG, log_decay):
    if log_decay.dim() == 1:  # sum_t sum_{s>=t} dG_s = sum_s (s + 1) dG_s
        w = torch.arange(1, dG.shape[1] + 1, device=dG.device, dtype=dG.dtype)
        return (dG * w[None, :, None]).sum((0, 1)).to(log_decay.dtype)
    x = dG.transpose(1, 2).contiguous()
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1]).transpose(1, 2).to(log_decay.dtype)


out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__, "T": T, "H": H}
a = torch.randn(B, T, H, device=dev)
g = -torch.rand(H, device=dev) * 0.01
out["cumsum_dim1_ms"] = ms(lambda: torch.cumsum(a, 1))
out["cumsum_lastdim_ms"] = ms(lambda: torch.cumsum(a.transpose(1, 2).contiguous(), -1).transpose(1, 2))
out["sum_dim1_ms"] = ms(lambda: a.sum(1))
out["slice_cumdecay_const_ms"] = ms(lambda: chunked.slice_cumdecay(g, B, T, H, torch.float32))
out["slice_cumdecay_const_fast_ms"] = ms(lambda: fast_slice_cumdecay(g, B, T, H, torch.float32))
out["log_decay_grad_const_ms"] = ms(lambda: chunked.log_decay_grad(a, g))
out["log_decay_grad_const_fast_ms"] = ms(lambda: fast_log_decay_grad(a, g))
out["log_decay_grad_gate_ms"] = ms(lambda: chunked.log_decay_grad(a, a))
out["log_decay_grad_gate_fast_ms"] = ms(lambda: fast_log_decay_grad(a, a))
ad = a.double()
out["err_slice_cumdecay"] = rel_rms(fast_slice_cumdecay(g, B, T, H, torch.float32),
                                    chunked.slice_cumdecay(g.double(), B, T, H, torch.float64))
out["err_log_decay_grad_const"] = rel_rms(fast_log_decay_grad(a, g), chunked.log_decay_grad(ad, g.double()))
out["err_log_decay_grad_gate"] = rel_rms(fast_log_decay_grad(a, a), chunked.log_decay_grad(ad, ad))
print(json.dumps(out), flush=True)

if dev == "cuda":
    x = {n: torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for n in ("q", "k", "v", "do")}
    s = torch.randn(B, H, D, D, device=dev)
    q, k, v, do = x["q"], x["k"] / D**0.5, x["v"], x["do"]
    o = torch.randn_like(q)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def step():
        for t in leaves:
            t.grad = None
        lasp_fx.linear_attention(q, k, v, g).backward(do)

    def grads():
        step()
        return [t.grad.clone() for t in leaves]

    dk, dv, dG = k.detach().clone(), v.detach().clone(), a.clone()
    res = {}
    for mode in ("as_is", "fast_scans"):
        if mode == "fast_scans":
            tcorrect.slice_cumdecay = fast_slice_cumdecay
            chunked.slice_cumdecay = fast_slice_cumdecay
            chunked.log_decay_grad = fast_log_decay_grad
        res[f"fwd_correct_ms_{mode}"] = ms(lambda: tcorrect.fwd_correct(o, q.detach(), g, D**-0.5, s))
        res[f"bwd_correct_ms_{mode}"] = ms(lambda: chunked.bwd_correct(dk, dv, dG, k.detach(), v.detach(), g, s, s))
        res[f"op_fwd_ms_{mode}"] = ms(lambda: lasp_fx.linear_attention(q, k, v, g))
        res[f"op_fwdbwd_ms_{mode}"] = ms(step)
        res[f"_out_{mode}"] = [tcorrect.fwd_correct(o, q.detach(), g, D**-0.5, s)] + grads()
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}), flush=True)
    out["err_fast_vs_as_is"] = max(rel_rms(x, y) for x, y in zip(res.pop("_out_fast_scans"), res.pop("_out_as_is")))
    out.update(res)
    print(json.dumps(out), flush=True)
