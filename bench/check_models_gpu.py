"""Every example model on this GPU through parallelize() and backend="lasp", against the model as written.

    torchrun --standalone --nproc-per-node=1 bench/check_models_gpu.py --tokens 2048 --json out.json

Per model: the loss and every parameter gradient of parallelize(model) (a NCCL group of the
processes started) and of torch.compile(model, backend="lasp"), relative RMS error against the
unmodified model in float32 and float64 on the same card; inspect()'s matches on CPU and on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

import lasp_fx
from lasp_fx.cli.timing import card
from examples.models import MODELS, ModelConfig
from lasp_fx.numerics import rel_rms


def _grads(model):
    return {n.removeprefix("_orig_mod."): p.grad.detach().double().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _step(model, ids, labels):
    loss = model(ids, labels=labels)
    loss.backward()
    return loss.detach().double(), _grads(model)


def _err(got, ref):
    loss = rel_rms(got[0], ref[0])
    grads = max(rel_rms(got[1][n], g) for n, g in ref[1].items())
    missing = sorted(set(ref[1]) ^ set(got[1]))
    return {"loss": loss, "grad_max": grads, "grads_missing": missing}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    if torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    else:  # a dry run of the script itself on CPU (gloo)
        dev = torch.device("cpu")
    cfg = ModelConfig(vocab_size=512, dim=256, num_layers=4, num_heads=4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, a.tokens), generator=gen).to(dev)
    labels = torch.randint(0, cfg.vocab_size, (2, a.tokens), generator=gen).to(dev)
    out = {}
    for name in a.models.split(","):
        def fresh(dtype=torch.float32):
            torch.manual_seed(0)
            return MODELS[name](cfg).to(dev, dtype)

        row = {}
        try:
            ref64 = _step(fresh(torch.float64), ids, labels)
            ref32 = _step(fresh(), ids, labels)
            row["eager_fp32_vs_fp64"] = _err(ref32, ref64)
            rep_cpu = lasp_fx.inspect(fresh().cpu(), ids[:, :64].cpu())
            rep_gpu = lasp_fx.inspect(fresh(), ids[:, :64])
            row["inspect_cpu"] = [(m.family, str(m.decay)) for m in rep_cpu.matches]
            row["inspect_cuda"] = [(m.family, str(m.decay)) for m in rep_gpu.matches]
            row["inspect_same"] = str(rep_cpu.matches) == str(rep_gpu.matches)
            par = _step(lasp_fx.parallelize(fresh()), ids, labels)
            row["parallelize_vs_fp64"] = _err(par, ref64)
            torch._dynamo.reset()
            be = _step(torch.compile(fresh(), backend="lasp"), ids, labels)
            row["backend_vs_fp64"] = _err(be, ref64)
            row["ok"] = True
        except Exception as e:  # noqa: BLE001 - a row per model, the error in it
            row["ok"] = False
            row["error"] = f"{type(e).__name__}: {str(e)[:600]}"
        torch._dynamo.reset()
        out[name] = row
        if rank == 0:
            print(name, json.dumps(row, default=str), flush=True)
    if rank == 0 and a.json:
        json.dump({"card": card(dev), "torch": torch.__version__, "tokens": a.tokens,
                   "models": out}, open(a.json, "w"), indent=1, default=str)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
