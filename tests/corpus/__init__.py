"""Small models written the ways people write attention, for the FX pass tests.

`CORPUS` maps a name to (model class, expected matches, expected near-miss families). Each
expected match is (family, decay kind, normalised). Every model takes x [B, T, DIM].
"""

from tests.corpus import blocks, cumsum_forms, decay_masks, negatives, quadratic_forms

DIM, HEADS = 32, 4

CORPUS = {
    # family 1: quadratic masked, many spellings
    "matmul_masked_fill": (quadratic_forms.MatmulMaskedFill, [("quadratic", "none", False)], []),
    "einsum_tril_heads_dim2": (quadratic_forms.EinsumTril, [("quadratic", "none", False)], []),
    "bmm_where_scale_on_k": (quadratic_forms.BmmWhere, [("quadratic", "none", False)], []),
    "float_mask_mT": (quadratic_forms.FloatMaskDiv, [("quadratic", "none", False)], []),
    "gqa_expand_reshape": (quadratic_forms.GQAExpand, [("quadratic", "none", False)], []),
    "mqa_repeat_interleave": (quadratic_forms.MQARepeatInterleave, [("quadratic", "none", False)], []),
    # family 2: decay masks
    "retnet_pow_buffer": (decay_masks.RetNetPow, [("decay-mask", "const", False)], []),
    "learnable_exp_decay": (decay_masks.LearnableExpDecay, [("decay-mask", "const", False)], []),
    "gate_log_cumsum": (decay_masks.GateLogCumsum, [("decay-mask", "gate", False)], []),
    "decay_mask_buffer": (decay_masks.DecayMaskBuffer, [("decay-mask", "const", False)], []),
    # families 3 and 4: cumulative sums and normalised forms
    "cumsum_outer_mul": (cumsum_forms.CumsumOuterMul, [("cumsum", "none", False)], []),
    "cumsum_einsum_normalised": (cumsum_forms.CumsumEinsumNormalised, [("normalised", "none", True)], []),
    "rowsum_normalised": (cumsum_forms.RowSumNormalised, [("normalised", "none", True)], []),
    # family 5: block loops
    "block_loop_decay": (blocks.BlockLoopDecay, [("block-loop", "const", False)], []),
    # hybrids and models without linear attention
    "hybrid_linear_softmax": (negatives.Hybrid, [("decay-mask", "const", False)], ["softmax"]),
    "softmax_manual": (negatives.SoftmaxManual, [], ["softmax"]),
    "sdpa_only": (negatives.SDPAOnly, [], []),
    "attention_free_mlp_conv": (negatives.AttentionFree, [], []),
    "bidirectional_linear": (negatives.Bidirectional, [], ["causality", "quadratic"]),  # the whole-graph probe says it first
    "anti_causal_triu": (negatives.AntiCausal, [], ["causality", "quadratic"]),  # the whole-graph probe says it first
    "learnable_temperature": (negatives.LearnableTemperature, [], ["quadratic"]),
    # scores as a product summed over the features (Kimi delta attention's spelling): said why
    "feature_sum_scores": (negatives.FeatureSumScores, [], ["quadratic"]),
    "per_channel_decay_scores": (negatives.PerChannelDecayScores, [], ["quadratic"]),
    # row normalisers detached, abs, clamped (RetNet's): the replacement does the same to its normaliser
    "detached_row_norm": (negatives.DetachedRowNorm, [("normalised", "const", True)], []),
    "abs_row_norm": (negatives.AbsRowNorm, [("normalised", "const", True)], []),
    "clamp_row_norm": (negatives.ClampRowNorm, [("normalised", "const", True)], []),
    # ... and ones it does not read, equal in value on positive inputs at most: refused by the probe
    "where_row_norm": (negatives.WhereRowNorm, [], ["normalised"]),
    "detached_eps_row_norm": (negatives.DetachedEpsRowNorm, [], ["normalised"]),
}
