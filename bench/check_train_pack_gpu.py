"""GPU check of examples/train.py --pack: the packed hybrid trains under parallelize() with the plain model's losses.

Run on a GPU machine from the repository root (one process, a group of one: the op's Triton
kernels with document ids, the softmax layer's packed mask through the library's tiles):
    PYTHONPATH=. python bench/check_train_pack_gpu.py --json out.json

Trains the same steps twice from the same weights, under parallelize() (Inductor) and as the plain
model (eager, no lasp_fx passes), and compares the losses step by step. Exits 1 when they differ
by more than --tol (relative), a loss is not finite, or the loss does not fall. `--device cpu`
is a dry run with tiny sizes.
"""

import argparse
import json
import math
import os
import socket
import sys
import time

os.environ.setdefault("LASP_FX_AUTOTUNE", "0")  # bounded compile time on a cold Triton cache

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from examples.train import parse_args, train  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model", default="hybrid")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    cuda = args.device == "cuda"
    sizes = "--seq-len 8192 --batch-size 2 --doc-len 2048 --steps 20" if cuda else \
        "--seq-len 64 --batch-size 2 --doc-len 12 --steps 3 --dim 16 --heads 2 --compiler eager"
    train_args = parse_args(f"--pack --model {args.model} --log-every 5 {sizes}".split())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            **({"device_id": device} if cuda else {}))
    start = time.perf_counter()
    parallel = train(train_args, device)
    plain = train(train_args, device, parallel=False)
    dist.destroy_process_group()
    worst = max(abs(a - b) / abs(b) for a, b in zip(parallel, plain))
    finite = all(math.isfinite(x) for x in parallel + plain)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "args": vars(train_args), "losses_parallel": parallel, "losses_plain": plain,
              "max_rel_diff": worst, "finite": finite, "falls": parallel[-1] < parallel[0],
              "seconds": time.perf_counter() - start}
    result["ok"] = bool(finite and worst <= args.tol and result["falls"])
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
