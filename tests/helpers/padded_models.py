"""The example models (examples.models) called with a tokenizer's attention_mask, the way HF models use it.

`PaddedLM("hybrid")` runs the example's own layers and weights; the attention_mask ([B, T], 1 =
token, 0 = padding) enters as in HF transformers: every token mixer's input is zeroed at padded
positions (HF's `create_recurrent_attention_mask` trims the mask to the input's length and
`apply_mask_to_padding_states` multiplies, in its Mamba, MiniMax and Qwen3-Next layers), and softmax
layers take `causal & attention_mask[b, kv]` as their SDPA mask, spelled here by hand (tril and an
index), not by HF's masking_utils.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PaddedLM(nn.Module):
    """An example language model (`examples.models.MODELS[name]`) that takes `attention_mask`.

    masked_loss: the loss is the mean over the mask's tokens, `(loss * mask).sum() / mask.sum()`,
    instead of the example's cross-entropy that skips labels of -100.
    """

    def __init__(self, name: str = "hybrid", masked_loss: bool = False):
        super().__init__()
        from examples.models import MODELS

        self.lm = MODELS[name]()
        self.masked_loss = masked_loss

    def forward(self, input_ids, labels=None, attention_mask=None):
        from examples.models.hybrid import SoftmaxAttention

        lm = self.lm
        keep = None if attention_mask is None else attention_mask.bool()
        x = lm.embed(input_ids)
        for block in lm.blocks:
            h = block.norm1(x)
            if keep is not None:
                h = h * attention_mask[:, -h.shape[1]:, None].to(h.dtype)
            if isinstance(block.mixer, SoftmaxAttention):
                x = x + _softmax_attention(block.mixer, h, keep)
            else:
                x = x + block.mixer(h)
            x = x + block._mlp(x)
        logits = lm.head(lm.norm(x))
        if labels is None:
            return logits
        if self.masked_loss and keep is not None:
            losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
            return (losses * keep).sum() / keep.sum()
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _softmax_attention(layer, x, keep):
    """examples.models.hybrid.SoftmaxAttention with the padded keys masked out."""
    from examples.models.retnet import rotate

    b, n, c = x.shape
    q, k, v = layer.qkv(x).view(b, n, 3, layer.h, c // layer.h).unbind(2)
    pos = torch.arange(n, device=x.device)
    q, k = rotate(q, pos), rotate(k, pos)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if keep is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & keep[:, None, None, :])
    return layer.out(o.transpose(1, 2).reshape(b, n, c))
