"""Which aten ops fall in which class for the shard pass: the tables rules.py builds its registry from."""

import torch

aten = torch.ops.aten

POINTWISE_EXTRA = {
    aten.log_sigmoid.default, aten.dropout.default, aten.alpha_dropout.default, aten.feature_dropout.default,
    aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.type_as.default,
    aten.softplus.default, aten.elu.default, aten.celu.default, aten.glu.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.hardtanh.default, aten.leaky_relu.default, aten.relu.default,
    aten.gelu.default, aten.silu.default, aten.mish.default, aten.native_dropout.default,
    aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarOther,
    aten.where.ScalarSelf, aten.where.Scalar, aten.lerp.Scalar, aten.lerp.Tensor,
    aten.scalar_tensor.default, aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int,
    # `a & b`, `a | b` of masks (bitwise_and / or are tagged pointwise, their operator spellings not)
    aten.__and__.Tensor, aten.__and__.Scalar, aten.__or__.Tensor, aten.__or__.Scalar,
}
VIEWS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
    aten.unflatten.int,
}
SHAPE_SAFE = {
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.transpose.int,
    aten.permute.default, aten.t.default, aten.expand.default, aten.expand_as.default, aten.contiguous.default,
    aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
    aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default, aten.full_like.default,
    aten.rand_like.default, aten.randn_like.default, aten.ones.default, aten.zeros.default,
    aten.full.default, aten.empty.memory_format, aten.new_ones.default, aten.new_zeros.default,
    aten.new_empty.default, aten.new_full.default, aten.repeat_interleave.self_int, aten.movedim.int,
    aten.stack.default, aten.conj.default, aten.view_as_real.default, aten.view_as_complex.default,
}
ALONG = {
    aten.split.Tensor: (2, "dim", "splits"),
    aten.split_with_sizes.default: (2, "dim", "splits"),
    aten.chunk.default: (2, "dim", "chunks"),
    aten.unbind.int: (1, "dim", "unbinds"),
    aten.select.int: (1, "dim", "selects"),
    aten.narrow.default: (1, "dim", "narrows"),
    aten.cat.default: (1, "dim", "concatenates"),
    aten.flip.default: (1, "dims", "flips"),
    aten.roll.default: (2, "dims", "rolls"),
}
CONTRACTIONS = {
    aten.linear.default, aten.matmul.default, aten.mm.default, aten.bmm.default, aten.addmm.default,
    aten.baddbmm.default, aten.einsum.default,
}
REDUCTIONS_REFUSED = {
    aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default,
    aten.cumprod.default, aten.logcumsumexp.default, aten.cummax.default,
    aten.amax.default, aten.amin.default, aten.max.dim, aten.min.dim, aten.argmax.default,
    aten.argmin.default, aten.logsumexp.default, aten.var.correction, aten.std.correction,
    aten.var_mean.correction, aten.std_mean.correction, aten.prod.dim_int, aten.any.dim, aten.all.dim,
    aten.norm.ScalarOpt_dim, aten.linalg_vector_norm.default, aten.layer_norm.default,
    aten.native_layer_norm.default, aten.rms_norm.default, aten.group_norm.default,
    aten.native_group_norm.default, aten.sort.default, aten.topk.default,
}
