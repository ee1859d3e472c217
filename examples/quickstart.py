"""The op on a small input: lasp_fx.linear_attention against the token recurrence it computes."""

import torch

import lasp_fx
from lasp_fx.ops import naive


def main():
    torch.manual_seed(0)
    B, T, H, H_kv, D, E = 2, 1000, 8, 2, 32, 32  # GQA: 4 query heads per kv head
    q = torch.randn(B, T, H, D, requires_grad=True)
    k = torch.randn(B, T, H_kv, D, requires_grad=True)
    v = torch.randn(B, T, H_kv, E, requires_grad=True)
    log_decay = torch.nn.Parameter(torch.log(1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32))))  # RetNet

    o, state = lasp_fx.linear_attention(q, k, v, log_decay, output_final_state=True)
    o.square().mean().backward()
    print(f"o {tuple(o.shape)}, final state {tuple(state.shape)} {state.dtype}")
    print(f"grad of the learnable decay: {log_decay.grad}")

    with torch.no_grad():
        o_ref, _ = naive.recurrent_linear_attention(q.double(), k.double(), v.double(), log_decay.double())
    err = ((o.double() - o_ref).norm() / o_ref.norm()).item()
    print(f"relative RMS error against the float64 token recurrence: {err:.2e}")
    assert err < 1e-5


if __name__ == "__main__":
    main()
