"""One autograd op, two ways in: a torch.library custom op when traced, its autograd.Function twin when eager.

torch.library's dispatch and autograd wrapper around a Python custom op cost host time on every
call, and at long sequences the host's time per call is of the order of the GPU's. An eager call
on plain tensors gains nothing from them, so it runs the same functions through an
autograd.Function; anything traced keeps the custom op, one opaque node for dynamo, AOTAutograd,
Inductor and torch.export.
"""

from __future__ import annotations

import torch
from torch import Tensor


def runs_eagerly(*tensors) -> bool:
    """Plain tensors (or None), no compiler, export or dispatch mode tracing: the eager twin may run.

    torch.func transforms see plain tensors and take the autograd.Function, which supports them
    through its setup_context; meta tensors take the custom op, whose fake gives the shapes.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    return all(t is None or (type(t) is Tensor and not t.is_meta) for t in tensors)


class TwinOp:
    """`lasp_fx::NAME` and `lasp_fx::NAME_backward` (each with its fake), their autograd, and the eager twin.

    `forward(*inputs) -> outputs` and `gradients(*args) -> input gradients` are the two ops' bodies,
    annotated for torch.library's schema inference; `eager_forward` / `eager_gradients` (default:
    the same functions) are what the twin runs, on the twin's own inputs. `setup_context(ctx,
    inputs, outputs)` saves what the backward needs (both ways in), and `backward(ctx,
    *output_gradients, gradients=...)` returns the inputs' gradients, computed through `gradients`:
    the backward op when traced, `eager_gradients` in the twin.
    """

    def __init__(self, name: str, *, forward, forward_fake, gradients, gradients_fake, setup_context, backward,
                 eager_forward=None, eager_gradients=None):
        torch.library.custom_op(f"lasp_fx::{name}", forward, mutates_args=()).register_fake(forward_fake)
        torch.library.custom_op(f"lasp_fx::{name}_backward", gradients, mutates_args=()).register_fake(gradients_fake)
        traced_gradients = getattr(torch.ops.lasp_fx, f"{name}_backward")
        eager_gradients = eager_gradients or gradients

        def traced_backward(ctx, *output_gradients):
            return backward(ctx, *output_gradients, gradients=traced_gradients)

        torch.library.register_autograd(f"lasp_fx::{name}", traced_backward, setup_context=setup_context)
        self.traced = getattr(torch.ops.lasp_fx, name)

        # a class body does not see the enclosing names that it assigns itself: hence other names
        eager_forward, save = eager_forward or forward, setup_context

        class Eager(torch.autograd.Function):
            forward = staticmethod(eager_forward)
            setup_context = staticmethod(save)  # forward without ctx: torch.func transforms work too

            @staticmethod
            def backward(ctx, *output_gradients):
                return backward(ctx, *output_gradients, gradients=eager_gradients)

        Eager.__name__ = Eager.__qualname__ = f"Eager_{name}"
        self.eager = Eager

    def __call__(self, *inputs, traced_inputs: tuple | None = None) -> tuple:
        """The op's outputs: through the twin on plain tensors, else through the custom op (on `traced_inputs`
        where the op's schema wants other values than the twin, e.g. a group's name for the group)."""
        if runs_eagerly(*(x for x in inputs if x is None or isinstance(x, Tensor))):
            return self.eager.apply(*inputs)
        return self.traced(*(inputs if traced_inputs is None else traced_inputs))
