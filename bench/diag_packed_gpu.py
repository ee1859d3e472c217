"""Diagnosis of the packed kernels' const/gate failure on the H100 (branch packedspeed): which change makes o and dv right.

PYTHONPATH=.:bench python3 bench/diag_packed_gpu.py
"""
import os
os.environ.setdefault("LASP_FX_AUTOTUNE", "0")
import sys, time
sys.path.insert(0, os.path.dirname(__file__))
import torch
import triton
import check_packed_gpu as cp
from lasp_fx.ops.triton import launch, forward, backward

KS = cp.KERNELS


def pin(fn):
    for k in KS:
        k.configs = fn(k._orig)
        k.cache.clear()
        launch.forget(k)


for k in KS:
    k._orig = list(k.configs)

cp.SHAPES.update({
    "T20011_H4_Hk4_D128": (20011, 4, 4, 128, 128),
    "T20011_H16_Hk4_D64": (20011, 16, 4, 64, 128),
    "T4133_H16_Hk4_D128": (4133, 16, 4, 128, 128),
})
t0 = time.time()
seed = 0
def case(tag, shape="T20011_H16_Hk4_D128", name="edges", decay="const"):
    global seed
    seed += 1
    cp.check_packed(shape, name, decay, "bf16", seed)
    print(f"   ^ {tag}  ({time.time() - t0:.0f} s)", flush=True)

case("default")
case("one_doc (HAS_RUNS, no cuts)", name="one_doc")
pin(lambda c: [triton.Config(x.kwargs, num_warps=x.num_warps, num_stages=1) for x in c[:1]])
case("num_stages=1")
pin(lambda c: [triton.Config(x.kwargs, num_warps=4, num_stages=x.num_stages) for x in c[:1]])
case("num_warps=4")
pin(lambda c: c[-1:])
case("last config")
pin(lambda c: c[:1])
launch.ENABLED = False
case("no fast launch")
launch.ENABLED = True
for shape in ("T20011_H4_Hk4_D128", "T20011_H16_Hk4_D64", "T4133_H16_Hk4_D128"):
    case("shape", shape=shape)
# unpacked const through the op: cu_seqlens None
import lasp_fx
from lasp_fx.numerics import random_inputs, rel_rms
T, H, Hk, D, E = cp.SHAPES["T20011_H16_Hk4_D128"]
gen = torch.Generator().manual_seed(5)
a = random_inputs(1, T, H, D, E, kv_heads=Hk, decay="const", generator=gen)
x = {n: t.to(torch.bfloat16 if n in "qkv" else torch.float32).cuda().requires_grad_() for n, t in a.items()}
x6 = {n: t.detach().double().requires_grad_() for n, t in x.items()}
do = torch.randn(1, T, H, E, generator=gen).cuda()
o = lasp_fx.linear_attention(x["q"], x["k"], x["v"], x["log_decay"])
o = o[0] if isinstance(o, tuple) else o
o.backward(do.to(o.dtype))
r = lasp_fx.linear_attention(x6["q"], x6["k"], x6["v"], x6["log_decay"])
r = r[0] if isinstance(r, tuple) else r
r.backward(do.double())
print("unpacked const:", {n: f"{rel_rms(v, w):.1e}" for n, v, w in
      [("o", o, r), ("dq", x["q"].grad, x6["q"].grad), ("dk", x["k"].grad, x6["k"].grad), ("dv", x["v"].grad, x6["v"].grad)]}, flush=True)
