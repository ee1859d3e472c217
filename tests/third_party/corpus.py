"""The third-party corpus: what inspect() finds in each implementation and what parallelize() does.

Each entry: model ("module:Class"), kwargs, needs (the package it imports), matches (expected
families of inspect's matches, in graph order), near (whether inspect reports a near-miss),
parallel: ("equal", tol) - parallelize over 2 gloo ranks equals one process, logits and every
gradient on every rank - or ("refused", words): a lasp_fx error containing `words` (a string or a
tuple of them: the file and line it names, and why); dtype (default float64); capture_refused
(words inspect's CaptureError contains, for a model torch.export cannot capture: matches and near
are then unused). Sequence length 24 (12 tokens a rank).
"""

FLA = "tests.third_party.fla_naive:FlaNaiveLM"
LR = "tests.third_party.lucidrains"
HF = "tests.third_party.hf"


def _fla(kind, matches, near, parallel):
    return dict(model=FLA, kwargs={"kind": kind}, needs="fla", matches=matches, near=near, parallel=parallel)


THIRD_PARTY = {
    # fla-core's reference implementations (a dependency of lasp_fx)
    "fla_retention": _fla("retention", ["decay-mask"], False,
                          ("refused", "fla/ops/retention/naive.py:16")),  # range(seq_len) fixes the length
    "fla_parallel_simple_gla": _fla("parallel_simple_gla", ["decay-mask"], False, ("equal", 1e-5)),
    "fla_chunk_simple_gla": _fla("chunk_simple_gla", [], True,  # pads T to a multiple of the chunk
                                 ("refused", "fla/ops/simple_gla/naive.py:32")),
    "fla_recurrent_linear": _fla("recurrent_linear", [], False, ("refused", "fla/ops/linear_attn/naive.py:35")),
    "fla_based": _fla("based", [], True, ("refused", "fla/ops/based/naive.py:24")),
    "fla_rebased": _fla("rebased", [], True, ("refused", "fla/ops/rebased/naive.py:23")),
    # token loops: range(T) fixes the length, and the error names the loop
    "fla_delta_rule": _fla("delta_rule", [], False, ("refused", "fla/ops/delta_rule/naive.py:27")),
    "fla_gated_delta_rule": _fla("gated_delta_rule", [], False, ("refused", "fla/ops/gated_delta_rule/naive.py:50")),
    "fla_forgetting_attn": _fla("forgetting", [], True, ("refused", "fla/ops/forgetting_attn/naive.py:45")),
    "fla_gla": _fla("gla", [], False, ("refused", "fla/ops/gla/naive.py:33")),
    "fla_hgrn": _fla("hgrn", [], False, ("refused", "fla/ops/hgrn/naive.py:28")),
    # lucidrains' packages (test extra "thirdparty")
    "performer_pytorch": dict(model=f"{LR}:PerformerLM", kwargs={}, needs="performer_pytorch", matches=[], near=True,
                              # t.chunk(128) fixes the length (line 207); the key's amax over the
                              # whole sequence (line 113) makes it non-causal: both named, and the
                              # chunk loop's near-misses (line 212, one a chunk) listed once
                              parallel=("refused", ("performer_pytorch.py:207", "performer_pytorch.py:113",
                                                    "performer_pytorch.py:212"))),
    # non-causal FAVOR+: the keys' amax over the whole sequence (line 113) is the first op that mixes
    # positions; the feature maps' einsums before it contract the head dim, not the sequence
    "performer_pytorch_noncausal": dict(model=f"{LR}:PerformerLM", kwargs={"causal": False},
                                        needs="performer_pytorch", matches=[], near=True,
                                        parallel=("refused", ("aten.amax.default at performer_pytorch/"
                                                              "performer_pytorch.py:113", "reduces over the sequence"))),
    "linear_attention_transformer": dict(
        model=f"{LR}:LinearAttentionTransformerLM", kwargs={}, needs="linear_attention_transformer", matches=[],
        near=True, parallel=("refused", "linear_attention_transformer.py:244")),
    "linear_attention_transformer_buckets": dict(
        model=f"{LR}:LinearAttentionTransformerLM", kwargs={"blindspot_size": 4}, needs="linear_attention_transformer",
        matches=[], near=True, parallel=("refused", "linear_attention_transformer.py:240")),
    # local attention heads assert that the length is a multiple of the window: 24 tokens are, each
    # rank's 12 are not; the error is the model's own, at its line, said as the slice's
    "linear_attention_transformer_local": dict(
        model=f"{LR}:LinearAttentionTransformerLM", kwargs={"local_attn_window_size": 8, "n_local_attn_heads": 1},
        needs="linear_attention_transformer", matches=[], near=True,
        parallel=("refused", ("local_attention.py:132", "raised AssertionError('sequence length 12 must be divisible",
                              "each rank's slice"))),
    # torchscale 0.3.0 (installed --no-deps: .ci/run), the retention layer as shipped: its decay mask
    # divided by the root of its row sums, the scores by their detached row sums' abs clamped at 1;
    # rewritten as c_i num / clamp(|c_i den|, 1) with c_i at global positions
    "torchscale_retnet": dict(model="tests.third_party.torchscale_retnet:TorchscaleRetNetLM", kwargs={},
                              needs="torchscale", matches=["normalised"], near=False, parallel=("equal", 1e-10)),
    # HF transformers 5.x, from_config with the config's defaults (use_cache=True)
    # the MoE sorts each rank's (token, expert) pairs by expert and puts them back: position-wise
    # (passes/shard/permutations.py). float32: torch's CPU grouped_mm, which HF calls eagerly, has
    # no float64 kernel (the traced graph takes HF's fallback op)
    "hf_minimax": dict(model=f"{HF}:MiniMaxLM", kwargs={}, needs="transformers", matches=["block-loop", "block-loop"],
                       near=True, parallel=("equal", 1e-5), dtype="float32"),
    "hf_minimax_batched_mm": dict(model=f"{HF}:MiniMaxLM", kwargs={"experts": "batched_mm"}, needs="transformers",
                                  matches=["block-loop", "block-loop"], near=True, parallel=("equal", 1e-5),
                                  dtype="float32"),
    # transformers' "eager" experts loop over the experts hit, a count set by the routing: no one
    # graph holds it (inspect's export fails there too); the error names the loop and the variants
    "hf_minimax_eager_experts": dict(
        model=f"{HF}:MiniMaxLM", kwargs={"experts": "eager"}, needs="transformers", dtype="float32",
        capture_refused=("modeling_minimax.py:496", "for expert_idx in expert_hit", "experts_implementation"),
        parallel=("refused", ("modeling_minimax.py:496", "for expert_idx in expert_hit", "data-dependent",
                              'experts_implementation="grouped_mm"'))),
    # output_router_logits on a first call: HF installs its capturing hooks under a lock
    "hf_minimax_router_logits_first_call": dict(
        model=f"{HF}:MiniMaxAuxLossLM", kwargs={"hooks": False}, needs="transformers", dtype="float32",
        matches=["block-loop", "block-loop"], near=True,
        parallel=("refused", ("output_capturing.py:239", "with _hook_installation_lock", "`lock` context manager",
                              "output_router_logits=False"))),
    # HF's loss with output_router_logits: the load-balancing loss divides by the local row count
    "hf_minimax_aux_loss": dict(model=f"{HF}:MiniMaxAuxLossLM", kwargs={}, needs="transformers",
                                matches=["block-loop", "block-loop"], near=True, dtype="float32",
                                parallel=("refused", ("modeling_minimax.py:770", "tokens_per_expert_sum / total_rows",
                                                      "uses the sequence length as a number"))),
    # LFM2's gated short convolutions take halos, its softmax layer runs over ranks: no linear attention
    "hf_lfm2": dict(model=f"{HF}:Lfm2LM", kwargs={}, needs="transformers", matches=[], near=False,
                    parallel=("equal", 1e-10)),
    # Kimi delta attention pads to a multiple of its chunk: refused there, inside chunk_kimi_delta_attention;
    # its scores, a product summed over the features with a per-channel decay inside, are the near-miss
    "hf_kimi_linear": dict(model=f"{HF}:KimiLinearLM", kwargs={}, needs="transformers", matches=[], near=True,
                           parallel=("refused", ("modeling_kimi_linear.py:554", "pads the sequence by an amount "
                                                 "computed from its length", "modeling_kimi_linear.py:601",
                                                 "a decay per feature channel"))),
    # RWKV-4's WKV as a loop over tokens: range(seq_length) fixes the length, named
    "hf_rwkv": dict(model=f"{HF}:RwkvLM", kwargs={}, needs="transformers", matches=[], near=False,
                    parallel=("refused", ("modeling_rwkv.py:180", "for current_index in range(seq_length)"))),
    # Mamba-2's chunked scan pads to a multiple of its chunk (mamba2_chunk_scan's decay is a near-miss)
    "hf_bamba": dict(model=f"{HF}:BambaLM", kwargs={}, needs="transformers", matches=[], near=True,
                     parallel=("refused", ("modeling_bamba.py:388", "pads the sequence by an amount computed from its "
                                           "length", "modeling_bamba.py:545"))),
    # the cache's x[:, :, -T:] and tensor_split at T are no-ops, the causal conv takes halos: the
    # refusal is the delta rule's chunk padding, with the near-miss naming the function and why
    "hf_qwen3_next": dict(model=f"{HF}:Qwen3NextLM", kwargs={}, needs="transformers", matches=[], near=True,
                          parallel=("refused", ("modeling_qwen3_next.py:481", "torch_chunk_gated_delta_rule",
                                                "transition is a matrix, not a scalar decay"))),
    # Qwen3.5: M-RoPE's in-place copy of the H and W frequencies into the T table runs along the
    # features (passes/shard/writes.py); the refusal is then the delta rule's chunk padding, as Qwen3-Next's
    "hf_qwen3_5": dict(model=f"{HF}:Qwen35LM", kwargs={}, needs="transformers", matches=[], near=True,
                       parallel=("refused", ("modeling_qwen3_5.py:392", "pads the sequence by an amount",
                                             "torch_chunk_gated_delta_rule",
                                             "transition is a matrix, not a scalar decay"))),
}
