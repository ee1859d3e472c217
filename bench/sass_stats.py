"""The op's Triton kernels compiled for an H100 (sm_90) on a machine without a GPU: registers, spills, loop sizes.

Run from the repository root (no GPU, no CUDA driver: Triton's bundled ptxas and cuobjdump):
    PYTHONPATH=. python bench/sass_stats.py [--decays none,gate] [--all-configs] [--kernels _out_kernel,_dq_kernel]

Calls fwd / bwd once per decay form, unpacked and with packed documents (`--doc` tokens each),
B = 1, T = 4096, H = 2, D = E = 128, bf16, segments of 32 chunks, with a launch that compiles
instead of running. Per kernel, variant and autotune config: ptxas's registers and spilled bytes,
shared memory, the SASS of its loops (instructions, spill loads / stores inside) and a hash of its SASS: where a
change moves a kernel's registers or adds work to its main loop, or (equal hashes) changes nothing the GPU runs,
before any GPU time is spent.
Static only: it says nothing of time. Compiles take ~10 s each (cached in Triton's cache).
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402


class _Sm90:
    """Just enough of a driver for Triton to compile for sm_90 (nothing is launched)."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


driver.set_active(_Sm90())

from lasp_fx.ops import documents  # noqa: E402
from lasp_fx.ops.triton import backward, common, decay_grad, forward, states  # noqa: E402

common._sm_count = lambda index: 132  # an H100's SMs, for segment_chunks
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
FLAGS = ("G_MODE", "HAS_RUNS", "PACKED", "DG", "SPLIT", "TO_END", "CHUNKWISE")


def _loops(sass: str) -> list:
    """(instructions, spill loads, spill stores) of each loop of a SASS listing (a backward branch's range)."""
    ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    spans = sorted({(int(m.group(1), 16), a) for a, t in ins
                    if (m := re.search(r"BRA (?:U?P\d+, )?0x([0-9a-f]+)", t)) and int(m.group(1), 16) < a})
    out = []
    for lo, hi in spans:
        body = [t for a, t in ins if lo <= a <= hi]
        if len(body) > 50:  # not a spin or retry loop
            out.append((len(body), sum("LDL" in t for t in body), sum("STL" in t for t in body)))
    return out


def _stats(compiled) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        arch = re.search(r"\.target (sm_\w+)", compiled.asm["ptx"]).group(1)
        log = subprocess.run([os.path.join(BIN, "ptxas"), "-v", f"--gpu-name={arch}", ptx, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    spill = re.search(r"(\d+) bytes spill stores", log)
    # the listing's instructions alone (addresses and the header cut): two trees whose kernels compile to equal
    # hashes run the same code on the GPU, which checks a refactor without GPU time
    code = "\n".join(re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*);", sass))
    return {"regs": int(re.search(r"Used (\d+) registers", log).group(1)), "spill_bytes": int(spill.group(1)),
            "smem": compiled.metadata.shared, "loops": _loops(sass),
            "sass_sha1": hashlib.sha1(code.encode()).hexdigest()[:12]}


def _compiling_launch(rows, only, all_configs):
    def launch(kernel, grid, *args, **constexprs):
        tuned = isinstance(kernel, Autotuner)
        fn = kernel.fn if tuned else kernel
        if only and fn.__name__ not in only:
            return
        for cfg in (kernel.configs if all_configs else kernel.configs[:1]) if tuned else [None]:
            kwargs = dict(constexprs, **(cfg.all_kwargs() if cfg else {}))
            compiled = fn.run(*args, grid=None, warmup=True, **kwargs)
            config = "" if cfg is None else f"w{cfg.num_warps}s{cfg.num_stages}" + "".join(
                f"{k}{v}" for k, v in cfg.kwargs.items())
            flags = ",".join(f"{k}={int(v)}" for k, v in constexprs.items() if k in FLAGS)
            key = (fn.__name__, flags, config)
            if key not in {(r["kernel"], r["flags"], r["config"]) for r in rows}:
                rows.append({"kernel": fn.__name__, "flags": flags, "config": config, **_stats(compiled)})

    return launch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decays", default="none,const,gate")
    p.add_argument("--doc", type=int, default=1000, help="document length of the packed variant (0: unpacked only)")
    p.add_argument("--kernels", default="", help="comma-separated kernel names (default: all)")
    p.add_argument("--all-configs", action="store_true", help="every autotune config, not only the first")
    p.add_argument("--json", default="")
    a = p.parse_args()
    rows = []
    launch = _compiling_launch(rows, set(filter(None, a.kernels.split(","))), a.all_configs)
    for module in (forward, backward, states, decay_grad):
        module.launch = launch
    T, H, D = 4096, 2, 128
    x = torch.zeros(1, T, H, D, dtype=torch.bfloat16)
    for decay in a.decays.split(","):
        g = {"none": None, "const": torch.full((H,), -0.1), "gate": torch.full((1, T, H), -0.1)}[decay]
        for doc in sorted({0, a.doc}):
            cu = torch.cat([torch.arange(0, T, doc), torch.tensor([T])]) if doc else None  # the last ends at T
            runs = None if cu is None else documents.slice_runs(cu, None, 1, T)
            o, s, saved = forward.fwd(x, x, x, g, 0.1, save=True, runs=runs, nsub=32)
            backward.bwd(x, x, x, g, 0.1, x, saved=(saved, s), runs=runs, nsub=32)
    print(f"{'kernel':14} {'flags':44} {'config':12} {'regs':>4} {'spill':>5} {'smem':>6} {'sass':12}  "
          "loops (instr/LDL/STL)")
    for r in sorted(rows, key=lambda r: (r["kernel"], r["flags"], r["config"])):
        loops = " ".join(f"{n}/{ldl}/{stl}" for n, ldl, stl in r["loops"])
        print(f"{r['kernel']:14} {r['flags']:44} {r['config']:12} {r['regs']:>4} {r['spill_bytes']:>5} "
              f"{r['smem']:>6} {r['sass_sha1']:12}  {loops}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
