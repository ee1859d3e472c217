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
