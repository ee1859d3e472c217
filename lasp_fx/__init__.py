"""lasp_fx: sequence parallelism for linear-attention models, found and applied with torch.fx."""

from lasp_fx.api import parallelize
from lasp_fx.attention import linear_attention
from lasp_fx.config import ParallelConfig
from lasp_fx.convert import inspect
from lasp_fx.distributed.mesh import shard_batch

__version__ = "0.1.0"

__all__ = ["linear_attention", "parallelize", "ParallelConfig", "shard_batch", "inspect", "__version__"]
