"""Kernel variants of the decay backward on one GPU (ms, triton do_bench median): which costs what.

    PYTHONPATH=. python bench/records/2026-11-28_fold/variants.py [T]

dq / dk kernels at B=1, H=16, D=E=128, bf16, T=32K, constant decay: as shipped (BK=64, SPLIT),
without the hi/lo split (SPLIT=0: less precise decay gradient, for the cost only), BK=32; the
no-decay kernels for reference; the state passes (local + scan) fwd and reverse.
"""

import sys

import torch
import triton
from triton.testing import do_bench

from lasp_fx.ops.triton import backward as tb
from lasp_fx.ops.triton.common import CHUNK, block, decay_mode, segment_chunks
from lasp_fx.ops.triton.states import segment_states

T = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
B, H, D = 1, 16, 128
q, k, v, do = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
slopes = -torch.tensor([2 ** (-8 * (i + 1) / H) for i in range(H)], device="cuda")
scale = D**-0.5
nsub = segment_chunks(-(-T // CHUNK), B * H, q.device)
print(f"card {torch.cuda.get_device_name()}  T={T} nsub={nsub}", flush=True)
for gname, g0 in (("none", None), ("const", slopes)):
    g_mode, g = decay_mode(g0)
    for split in (True, False) if g_mode else (False,):
        t_fwd = do_bench(lambda: segment_states(k, v, g_mode, g, H, nsub, None, split=split))
        t_rev = do_bench(lambda: segment_states(q, do, g_mode, g, H, nsub, None, scale=scale, reverse=True, split=split))
        print(f"{gname:5} split={int(split)} state pass fwd {t_fwd:.3f} ms, reverse {t_rev:.3f} ms", flush=True)
    S, _, _ = segment_states(k, v, g_mode, g, H, nsub, None, split=g_mode != 0)
    dS, _, _ = segment_states(q, do, g_mode, g, H, nsub, None, scale=scale, reverse=True, split=g_mode != 0)
    nseg = S.shape[2]
    gp = q if g is None else g
    for BK in (64, 32):
        for split in (True, False) if g_mode else (False,):
            n_k = triton.cdiv(D, BK)
            dq = torch.empty_like(q)
            dGq = torch.empty(B, T, H, n_k, device="cuda", dtype=torch.float32)
            common = dict(G_MODE=g_mode, SPLIT=split, PREC="tf32", C=CHUNK, BK=BK, BE=block(D))
            tq = do_bench(lambda: tb._dq_kernel[(n_k, nseg, B * H)](
                q, k, v, gp, do, S, dq, dGq, scale, T, H, H, H, D, D, nsub, nseg, **common))
            tk = do_bench(lambda: tb._dk_kernel[(n_k, nseg, B * H)](
                q, k, v, gp, do, dS, dS, dS, dq, dGq, scale, T, H, H, D, D, nsub, nseg, HAS_LATE=False, **common))
            print(f"{gname:5} BK={BK} split={int(split)}  dq {tq:.3f} ms  dk {tk:.3f} ms", flush=True)
