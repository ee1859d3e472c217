"""lasp_fx: sequence parallelism for linear-attention models, found and applied with torch.fx."""

from lasp_fx.ops.op import linear_attention  # first: registers the op the passes refer to

from lasp_fx.api import ParallelConfig, parallelize  # noqa: E402
from lasp_fx.distributed.mesh import shard_batch  # noqa: E402
from lasp_fx.passes.detect.report import inspect  # noqa: E402

__version__ = "0.1.0"

__all__ = ["linear_attention", "parallelize", "ParallelConfig", "shard_batch", "inspect", "__version__"]
