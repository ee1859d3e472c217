"""Phil Wang's (lucidrains) linear-attention packages, pinned in the `thirdparty` test extra.

performer-pytorch 1.1.4: causal FAVOR+ without its CUDA kernel, a `t.chunk(128)` loop of
carried cumsums and a key feature map that subtracts an amax over the whole sequence;
with causal=False, sums of keys (and of k v^T) over the whole sequence instead of the loop.
linear-attention-transformer 0.19.1: causal linear attention over buckets of `blindspot_size`
tokens (1: token-causal; larger: queries do not see their own bucket).
"""

import torch

from tests.third_party.lm import DIM, HEAD_DIM, HEADS, VOCAB, LMHead


class PerformerLM(LMHead):
    def __init__(self, depth: int = 1, causal: bool = True):
        import contextlib
        import io

        from performer_pytorch import PerformerLM as _Performer

        with contextlib.redirect_stdout(io.StringIO()):  # it prints that the CUDA kernel is missing
            lm = _Performer(num_tokens=VOCAB, max_seq_len=64, dim=DIM, depth=depth, heads=HEADS, dim_head=HEAD_DIM,
                            causal=causal, nb_features=16, feature_redraw_interval=None)
        super().__init__(lm)


class LinearAttentionTransformerLM(LMHead):
    def __init__(self, blindspot_size: int = 1, depth: int = 1, **options):
        from linear_attention_transformer import LinearAttentionTransformerLM as _LAT

        lm = _LAT(num_tokens=VOCAB, dim=DIM, depth=depth, max_seq_len=64, heads=HEADS, dim_head=HEAD_DIM, causal=True,
                  blindspot_size=blindspot_size, use_axial_pos_emb=False, **options)
        super().__init__(lm)
