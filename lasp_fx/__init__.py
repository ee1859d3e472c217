"""lasp_fx: sequence parallelism for linear-attention models, found and applied with torch.fx."""

from lasp_fx.ops.op import linear_attention

__version__ = "0.1.0"

__all__ = ["linear_attention", "__version__"]
