"""Small language models in plain PyTorch, one per linear-attention family, written as people write them.

On ordinary rows none of them calls lasp_fx: `lasp_fx.parallelize` has to find their linear attention
itself. Rows of packed documents (`position_ids` restarting per document) call lasp_fx's op with
document ids, as a packed model calls a varlen kernel (FlashAttention's, fla's).
"""

from examples.models.common import ModelConfig
from examples.models.gated import GatedLM
from examples.models.hybrid import HybridLM
from examples.models.lightning import LightningLM
from examples.models.linear import LinearLM
from examples.models.retnet import RetNetLM

MODELS = {
    "lightning": LightningLM,
    "retnet": RetNetLM,
    "linear": LinearLM,
    "gated": GatedLM,
    "hybrid": HybridLM,
}

__all__ = ["MODELS", "ModelConfig", "LightningLM", "RetNetLM", "LinearLM", "GatedLM", "HybridLM"]
