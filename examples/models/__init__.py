"""Small language models in plain PyTorch, one per linear-attention family, written as people write them.

None of them imports lasp_fx: `lasp_fx.parallelize` has to find their linear attention itself.
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
