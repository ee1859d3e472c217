"""HF transformers 5.x linear-attention architectures as users load them: `from_config`, tiny sizes,
every other setting (use_cache included) as the config defaults."""

from torch import nn

from tests.third_party.lm import VOCAB, LMHead


def _from_config(config, **kwargs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, **kwargs)
    return LMHead(model, logits=lambda out: out.logits)


def _minimax_config(block_size: int = 8, **kwargs):
    from transformers import MiniMaxConfig

    return MiniMaxConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                         num_experts_per_tok=2, block_size=block_size, max_position_embeddings=128,
                         layer_types=["full_attention", "linear_attention"] * 2, **kwargs)


class MiniMaxLM(LMHead):
    """Lightning attention (a Python loop over blocks of `block_size` tokens with a carried state,
    per-head decay) in layers 1 and 3, softmax attention in 0 and 2, a mixture of 4 experts, 2 a
    token: transformers' default `grouped_mm` experts sort the (token, expert) pairs by expert and
    put them back; `experts="batched_mm"` gathers each pair's expert weights instead."""

    def __init__(self, block_size: int = 8, experts: str | None = None):
        kwargs = {"experts_implementation": experts} if experts else {}
        super().__init__(_from_config(_minimax_config(block_size), **kwargs).lm, logits=lambda out: out.logits)


class MiniMaxAuxLossLM(nn.Module):
    """MiniMax trained on HF's own loss with `output_router_logits=True`: the load-balancing loss
    counts each expert's tokens and divides by the number of rows. HF installs its router-logit
    hooks on the first call, under a threading lock dynamo cannot trace (torch.compile fails there
    too); `hooks=True` installs them here, as a model already called once has them."""

    def __init__(self, hooks: bool = True):
        from transformers import AutoModelForCausalLM
        from transformers.utils.output_capturing import maybe_install_capturing_hooks

        super().__init__()
        self.lm = AutoModelForCausalLM.from_config(_minimax_config(output_router_logits=True))
        if hooks:
            maybe_install_capturing_hooks(self.lm.model)

    def forward(self, ids, labels=None):
        out = self.lm(ids, labels=labels)
        return out.logits if labels is None else out.loss


class Qwen3NextLM(LMHead):
    """Gated delta rule layers (a matrix-valued transition: never LASP) and gated softmax attention."""

    def __init__(self):
        from transformers import Qwen3NextConfig

        config = Qwen3NextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_conv_kernel_dim=2,
                                 linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                                 linear_num_value_heads=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                 num_experts=2, num_experts_per_tok=1, max_position_embeddings=128,
                                 layer_types=["linear_attention", "full_attention"])
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)


class Lfm2LM(LMHead):
    """LFM2: gated short causal convolutions (kernel 3) and softmax attention, no linear attention."""

    def __init__(self):
        from transformers import Lfm2Config

        config = Lfm2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                            layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False)
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)


class KimiLinearLM(LMHead):
    """Kimi Linear: Kimi delta attention (a delta rule with a per-channel gate, chunked with padding
    to a multiple of 64 tokens, scores as a product summed over features) and MLA softmax layers."""

    def __init__(self):
        from transformers import KimiLinearConfig

        config = KimiLinearConfig(vocab_size=VOCAB, pad_token_id=0, hidden_size=32, intermediate_size=32,
                                  moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=2, num_experts=2, num_experts_per_token=1, qk_rope_head_dim=8,
                                  v_head_dim=16, qk_nope_head_dim=8, linear_head_dim=8, linear_num_heads=2,
                                  linear_conv_kernel_dim=2, head_dim=16, max_position_embeddings=128,
                                  mlp_layer_types=["dense", "dense"], layer_types=["linear_attention", "full_attention"])
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)


class RwkvLM(LMHead):
    """RWKV-4: the WKV recurrence (per-channel decay and bonus, a running max for stability) as a
    Python loop over tokens on the CPU."""

    def __init__(self):
        from transformers import RwkvConfig

        config = RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                            intermediate_size=32, context_length=128)
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)


class BambaLM(LMHead):
    """Bamba: Mamba-2 layers (the chunked SSD scan of `torch_forward`, padded to a multiple of its
    chunk) beside softmax attention."""

    def __init__(self):
        from transformers import BambaConfig

        config = BambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, mamba_n_heads=4, mamba_d_head=16,
                             mamba_d_state=8, mamba_chunk_size=8, mamba_n_groups=1, attn_layer_indices=[1],
                             max_position_embeddings=128)
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)


class Qwen35LM(LMHead):
    """Qwen3.5 (text): gated delta rule layers and gated softmax attention with M-RoPE, whose
    rotary table copies the H and W frequencies into interleaved features of the T table in place."""

    def __init__(self):
        from transformers import Qwen3_5TextConfig

        config = Qwen3_5TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_conv_kernel_dim=2,
                                   linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                                   linear_num_value_heads=2, max_position_embeddings=128,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]},
                                   layer_types=["linear_attention", "full_attention"])
        super().__init__(_from_config(config).lm, logits=lambda out: out.logits)
