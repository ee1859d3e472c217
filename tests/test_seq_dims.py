"""Which reshapes keep every sequence position whole, so that each rank may reshape its own slice."""

import pytest
import torch
from torch._dynamo.source import ConstantSource
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from lasp_fx.passes.shard.seq_dims import reshape_position_stride


def _length():
    env = ShapeEnv()
    return env.create_symintnode(env.create_symbol(12, ConstantSource("s")), hint=12)


S = _length()
SYMBOLS = frozenset(S.node.expr.free_symbols)


@pytest.mark.parametrize("src, out, stride_in, stride_out", [
    pytest.param([2, S, 8], [2 * S, 8], 1, 1, id="merge_batch_before"),
    pytest.param([2 * S, 8], [2, S, 8], 1, 1, id="undo_merge"),
    pytest.param([2, S, 8], [2, S, 2, 4], 1, 1, id="split_features"),
    pytest.param([2, S, 2, 4], [2 * S, 8], 1, 1, id="merge_both_sides_apart"),
    pytest.param([2 * S, 2], [4 * S], 1, 2, id="merge_with_a_dim_after"),
    pytest.param([4 * S], [2 * S, 2], 2, 1, id="undo_merge_with_a_dim_after"),
    pytest.param([2, S, 2, 4], [2 * S * 2, 4], 1, 2, id="merge_heads_into_tokens"),
    pytest.param([S], [S // 2, 2], 1, None, id="blocks_of_the_sequence"),
    pytest.param([S, 4], [4, S], 1, None, id="same_sizes_positions_mixed"),
    pytest.param([2 * S], [S, 2], 1, None, id="merged_batch_split_the_other_way"),
    pytest.param([4 * S], [2 * S, 2], 1, None, id="split_without_a_merge_behind_it"),
    pytest.param([4 * S], [S, 4], 2, None, id="split_past_the_merged_dim"),
])
def test_reshape_keeps_positions_whole_or_is_refused(src, out, stride_in, stride_out):
    assert reshape_position_stride(src, out, SYMBOLS, stride_in) == stride_out
