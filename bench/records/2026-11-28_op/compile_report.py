"""Registers and spills of the kernels, compiled for sm_90 on a machine without a GPU (no device time).

    PYTHONPATH=. python bench/records/2026-11-28_op/compile_report.py [name:G_MODE:tile:warps:stages ...]

name: loc | out | dq | dk | dv; tile: BX, BV or BK. Integer arguments are compiled as divisible
by 16 (as Triton specialises them at the bench shape: D = E = 128, T = 8K..512K, H = 16).
Prints REG (registers per thread) and STACK (bytes of spill stack per thread) from cuobjdump.
"""

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lasp_fx.ops.triton import backward, forward, states

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def report(kern, ptrs, f32s, consts, warps, stages):
    fn = kern.fn
    sig = {n: "*bf16" if n in ptrs else "*fp32" if n in f32s else "fp32" if n == "scale" else "i32" for n in fn.arg_names}
    sig.update({n: "constexpr" for n in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n] in ("i32", "*bf16", "*fp32")}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:\d+ STACK:\d+", usage)
    shown = {n: v for n, v in consts.items() if n not in ("PREC", "C")}
    print(f"{fn.__name__:14s} {shown} warps={warps} stages={stages} smem={k.metadata.shared} {m.group(0)}", flush=True)


def main(specs):
    for spec in specs:
        name, g, tile, warps, stages = spec.split(":")
        g, tile, warps, stages = int(g), int(tile), int(warps), int(stages)
        split = g != 0
        if name == "loc":
            args = (states._local_kernel, {"x", "y"}, {"g", "U", "A"},
                    dict(G_MODE=g, TO_END=False, SPLIT=split, PREC="tf32", C=64, BX=tile, BY=64))
        elif name == "out":
            args = (forward._out_kernel, {"q", "k", "v", "o"}, {"g", "S"}, dict(G_MODE=g, PREC="tf32", C=64, BD=128, BV=tile))
        elif name in ("dq", "dk"):
            kern = backward._dq_kernel if name == "dq" else backward._dk_kernel
            out = "dq" if name == "dq" else "dk"
            args = (kern, {"q", "k", "v", "do", out}, {"g", "S", "dS", "dGq", "dGk"},
                    dict(G_MODE=g, SPLIT=split, PREC="tf32", C=64, BK=tile, BE=128))
        else:
            args = (backward._dv_kernel, {"q", "k", "do", "dv"}, {"g", "dS"},
                    dict(G_MODE=g, SPLIT=split, PREC="tf32", C=64, BD=128, BV=tile))
        report(*args, warps, stages)


if __name__ == "__main__":
    default = [f"{n}:{g}:{t}:{w}:2" for n, t in (("loc", 64), ("out", 64), ("dq", 64), ("dk", 64), ("dv", 64))
               for g in (0, 1) for w in (8, 4)]
    main(sys.argv[1:] or default)
