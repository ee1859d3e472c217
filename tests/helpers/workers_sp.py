"""Spawned-rank workers for the LASP tests: each rank compares its slice with the single-process op.

Every function runs on every rank as `fn(rank, world_size, arg, device)` under `spawn.run_spawned` (through
`run_jobs`) and returns plain data (relative-RMS errors, messages) for the parent to assert on. `device`
is "cpu" or this rank's "cuda:{rank}"; inputs are drawn on the CPU and moved there.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import lasp_fx
from lasp_fx.distributed.combine import wait_all
from lasp_fx.numerics import random_inputs, rel_rms


def _global_inputs(case: dict, world: int, seed: int, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(seed)
    B, T, H, D, E = case["B"], case["T"] * world, case["H"], case["D"], case["E"]
    args = random_inputs(B, T, H, D, E, kv_heads=case.get("Hk"), decay=case["decay"],
                         initial_state=case.get("init") is not None, generator=gen)
    args["w_o"] = torch.randn(B, T, H, E, generator=gen, dtype=torch.float64)
    args["w_f"] = torch.randn(world, B, H, D, E, generator=gen, dtype=torch.float64)
    return {n: t.to(device) for n, t in args.items()}


def _leaves(args: dict) -> dict:
    return {n: args[n].clone().requires_grad_() for n in ("q", "k", "v", "log_decay", "initial_state") if n in args}


def _reference(args: dict, world: int, T: int, with_final: bool) -> dict:
    """Single-process output, the state after each rank's slice, and the gradients of the same loss."""
    x = _leaves(args)
    extra = {n: x[n] for n in ("log_decay", "initial_state") if n in x}
    o = lasp_fx.linear_attention(x["q"], x["k"], x["v"], **extra)
    states = []
    for r in range(world):  # the state after token (r+1)*T: the op on the prefix
        cut = {n: (t[:, : (r + 1) * T] if n == "log_decay" and t.dim() == 3 else t) for n, t in extra.items()}
        states.append(lasp_fx.linear_attention(x["q"][:, : (r + 1) * T], x["k"][:, : (r + 1) * T],
                                               x["v"][:, : (r + 1) * T], output_final_state=True, **cut)[1])
    loss = (o * args["w_o"]).sum()
    if with_final:
        loss = loss + sum((s * w).sum() for s, w in zip(states, args["w_f"]))
    loss.backward()
    return {"o": o.detach(), "states": [s.detach() for s in states], **{f"d{n}": t.grad for n, t in x.items()}}


def _local(args: dict, rank: int, T: int, init: str | None, fixed_decay: bool = False) -> dict:
    """This rank's slice as leaves; the initial state on rank 0 only, or on every rank with init="all";
    a fixed_decay is a buffer (no gradient asked)."""
    cut = slice(rank * T, (rank + 1) * T)
    x = {n: args[n][:, cut].clone().requires_grad_() for n in ("q", "k", "v")}
    if "log_decay" in args:
        g = args["log_decay"]
        x["log_decay"] = (g[:, cut] if g.dim() == 3 else g).clone().requires_grad_(not fixed_decay)
    if init is not None and (rank == 0 or init == "all"):
        x["initial_state"] = args["initial_state"].clone().requires_grad_()
    return x


def _attention(group, method: str, backend: str | None, check: bool = True):
    """The call under test, compiled with fullgraph=True when `backend` is given, and dynamo's counter."""

    def run(q, k, v, log_decay=None, initial_state=None):
        return lasp_fx.linear_attention(q, k, v, log_decay, initial_state=initial_state, output_final_state=True,
                                        group=group, method=method, check=check)

    if backend is None:
        return run, None
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend(backend)
    return torch.compile(run, backend=counter, fullgraph=True), counter


def _sp_nodes(counter) -> int:
    return sum("sp_linear_attention" in str(n.target) for g in counter.graphs for n in g.graph.nodes)


def _errors(case: dict, rank: int, world: int, group, args: dict, ref: dict) -> dict:
    T = case["T"]
    x = _local(args, rank, T, case.get("init"), case.get("fixed_decay", False))
    run, counter = _attention(group, case["method"], case.get("compile"), case.get("check", True))
    o, final = run(**x)
    cut = slice(rank * T, (rank + 1) * T)
    loss = (o * args["w_o"][:, cut]).sum()
    if case.get("final"):
        loss = loss + (final * args["w_f"][rank]).sum()
    loss.backward()
    err = {"o": rel_rms(o, ref["o"][:, cut]), "final_state": rel_rms(final, ref["states"][rank])}
    for n in ("q", "k", "v"):
        err[f"d{n}"] = rel_rms(x[n].grad, ref[f"d{n}"][:, cut])
    if "log_decay" in x and not x["log_decay"].requires_grad:  # a buffer gets no gradient
        err["dlog_decay is not None"] = float(x["log_decay"].grad is not None)
    elif "log_decay" in x:
        g = x["log_decay"].grad
        if g.dim() == 3:
            err["dlog_decay"] = rel_rms(g, ref["dlog_decay"][:, cut])
        else:  # per-head decay: this rank holds a share; the shares sum to the full gradient
            total = g.clone()
            dist.all_reduce(total, group=group)
            err["dlog_decay(sum over ranks)"] = rel_rms(total, ref["dlog_decay"])
    if "initial_state" in x:
        d = x["initial_state"].grad
        err["dinitial_state"] = rel_rms(d, ref["dinitial_state"]) if rank == 0 else float(d.abs().max())
    if counter is not None:  # one graph holding one LASP op: compiled, not run eagerly behind a break
        err["graphs - 1"] = float(counter.frame_count - 1)
        err["LASP ops in graph - 1"] = float(_sp_nodes(counter) - 1)
    return err


def check_cases(rank: int, world: int, cases: list[dict], device: str = "cpu") -> dict:
    """For each case (a dict of sizes, decay, init, final, method, compile): {case id: {what: rel RMS}}."""
    out = {}
    for case in cases:
        args = _global_inputs(case, world, case["seed"], device)
        ref = _reference(args, world, case["T"], bool(case.get("final")))
        out[case["id"]] = _errors(case, rank, world, dist.group.WORLD, args, ref)
    return out


def check_mesh_2d(rank: int, world: int, case: dict, device: str = "cpu") -> dict:
    """A dp x sp mesh: each data-parallel row runs its own sequence over the mesh's "sp" dimension."""
    from torch.distributed.device_mesh import init_device_mesh

    sp = 2
    mesh = init_device_mesh(torch.device(device).type, (world // sp, sp), mesh_dim_names=("dp", "sp"))
    dp_rank, sp_rank = mesh.get_coordinate()
    args = _global_inputs(case, sp, case["seed"] + dp_rank, device)  # different data on each replica
    ref = _reference(args, sp, case["T"], bool(case.get("final")))
    return _errors(case, sp_rank, sp, mesh, args, ref)


def check_group_of_one(rank: int, world: int, case: dict, device: str = "cpu") -> dict:
    """With a group of one rank the result is the single-device op's, bit for bit."""
    args = _global_inputs(case, 1, case["seed"], device)
    x, y = _leaves(args), _leaves(args)
    extra = lambda d: {n: d[n] for n in ("log_decay", "initial_state") if n in d}  # noqa: E731
    o1, s1 = lasp_fx.linear_attention(x["q"], x["k"], x["v"], **extra(x), output_final_state=True)
    o2, s2 = lasp_fx.linear_attention(y["q"], y["k"], y["v"], **extra(y), output_final_state=True,
                                      group=dist.group.WORLD, method=case["method"])
    ((o1 * args["w_o"]).sum() + s1.sum()).backward()
    ((o2 * args["w_o"]).sum() + s2.sum()).backward()
    same = {"o": torch.equal(o1, o2), "final_state": torch.equal(s1, s2)}
    same.update({f"d{n}": torch.equal(x[n].grad, y[n].grad) for n in x})
    return same


def check_mismatch(rank: int, world: int, what: str, device: str = "cpu") -> dict:
    """Rank 1 passes a different `what`; every rank must raise, and the group must still work afterwards."""
    case = dict(B=1, T=8, H=2, D=4, E=4, decay="gate", seed=0)
    args = _global_inputs(case, world, 0, device)
    x = {n: args[n][:, :8] for n in ("q", "k", "v", "log_decay")}
    method = "ring"
    if rank == 1:
        if what == "length":
            x = {n: t[:, :7] for n, t in x.items()}
        elif what == "dtype":
            x = {n: t.float() for n, t in x.items()}
        elif what == "heads":
            x = {n: t[:, :, :1] for n, t in x.items()}
        elif what == "decay":
            x["log_decay"] = x["log_decay"][0, 0]  # per-head instead of per-token
        elif what == "method":
            method = "allgather"
    try:
        lasp_fx.linear_attention(**x, group=dist.group.WORLD, method=method)
        message = None
    except ValueError as e:
        message = str(e)
    good = {n: args[n][:, :8] for n in ("q", "k", "v")}
    still_works = lasp_fx.linear_attention(**good, group=dist.group.WORLD).shape == good["q"].shape
    return {"message": message, "still_works": still_works}


def exchange_order(rank: int, world: int, which: tuple[str, str], device: str = "cpu") -> list[str]:
    """When an exchange touches the network: the all-gather's collective must be issued by `begin_*`
    (so it runs during the output / dq kernel), the ring's links only when the result is asked for
    (except the backward's last rank, which only sends)."""
    method, direction = which
    from lasp_fx.distributed import allgather, ring

    events = []
    spied = {"allgather": [(allgather, "_all_gather_single")], "ring": [(ring, "_recv"), (ring, "_send")]}[method]
    originals = [(mod, name, getattr(mod, name)) for mod, name in spied]
    for mod, name, fn in originals:
        setattr(mod, name, lambda *a, _fn=fn, _name=name, **kw: (events.append(_name), _fn(*a, **kw))[1])
    try:
        ds = torch.randn(1, 2, 4, 4, dtype=torch.float64).to(device)
        link = _link(ds, method, direction)
        sends = []
        mod = {"allgather": allgather, "ring": ring}[method]
        if direction == "forward":
            finish = mod.begin_forward(ds, None, link, sends)
        else:
            finish = mod.begin_backward(ds, None, None, link, sends)
        events.append("begun")
        finish()
        events.append("finished")
        wait_all(sends, link)
    finally:
        for mod, name, fn in originals:
            setattr(mod, name, fn)
    return events


def _link(state, method: str, direction: str):
    """The exchange context of a call whose state is `state` [B, H, D, E] (as lasp.py builds it)."""
    from lasp_fx.distributed.header import make
    from lasp_fx.distributed.link import Link

    B, H, D, E = state.shape
    q = state.new_empty(B, 1, H, D)
    head = make(q, q, state.new_empty(B, 1, H, E), None, 1.0, method, direction, dist.get_rank())
    return Link(dist.group.WORLD, head, 30.0, tuple(state.shape), state.dtype, state.device, False)


def mesh_without_sp_dim(rank: int, world: int, _=None, device: str = "cpu") -> str | None:
    """A 2-D mesh whose dimensions are not named "sp" must be refused with a message saying so."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(torch.device(device).type, (2, world // 2), mesh_dim_names=("dp", "tp"))
    x = torch.randn(1, 4, 2, 4, dtype=torch.float64).to(device)
    try:
        lasp_fx.linear_attention(x, x, x, group=mesh)
    except ValueError as e:
        return str(e)
    return None


def run_jobs(rank: int, world: int, jobs: list[tuple[str, object]], device: str = "cpu") -> list:
    """Several checks in one spawn (a process start costs ~2 s): [(function name, its argument), ...], on
    `device` ("cuda": this rank's GPU, cuda:{rank})."""
    device = f"cuda:{rank}" if torch.device(device).type == "cuda" else "cpu"
    return [globals()[name](rank, world, arg, device) for name, arg in jobs]


def check_reset(rank: int, world: int, method: str, device: str = "cpu") -> dict:
    """-inf gates (state resets) on rank 0's last token, inside rank 1's slice and on rank 2's first: every
    rank's output, gradients and final state equal the single-process op's."""
    T = 9
    gen = torch.Generator().manual_seed(3)
    g_all = -torch.rand(1, T * world, 2, generator=gen, dtype=torch.float64)
    for t, h in ((T - 1, 0), (T + 4, 1), (2 * T, 0)):
        g_all[0, t, h] = float("-inf")
    g_all = g_all.to(device)
    full = {n: torch.randn(1, T * world, 2, 4, generator=gen, dtype=torch.float64).to(device)
            for n in ("q", "k", "v", "do")}

    def run(cut, group):
        x = {n: full[n][:, cut].clone().requires_grad_() for n in "qkv"}
        g = g_all[:, cut].clone().requires_grad_()
        o, s = lasp_fx.linear_attention(x["q"], x["k"], x["v"], g, output_final_state=True, group=group, method=method)
        (o * full["do"][:, cut]).sum().backward()
        return o.detach(), s.detach(), {n: x[n].grad for n in "qkv"}, g.grad

    cut = slice(rank * T, (rank + 1) * T)
    o, s, grads, dg = run(cut, dist.group.WORLD)
    ref_o, _, ref_grads, ref_dg = run(slice(0, T * world), None)
    prefix = lasp_fx.linear_attention(*(full[n][:, : (rank + 1) * T] for n in "qkv"), g_all[:, : (rank + 1) * T],
                                      output_final_state=True)[1]
    errors = {"o": rel_rms(o, ref_o[:, cut]), "final_state": rel_rms(s, prefix),
              "dlog_decay": rel_rms(dg, ref_dg[:, cut])}
    errors.update({f"d{n}": rel_rms(grads[n], ref_grads[n][:, cut]) for n in "qkv"})
    errors["non-finite"] = float(not all(torch.isfinite(t).all() for t in (o, s, dg, *grads.values())))
    return errors
