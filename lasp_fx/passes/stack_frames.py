"""Full user stacks on exported nodes: the frames of helper functions, not only of `forward`.

torch.export's tracer keeps only the frames of functions named `forward` in a node's
stack_trace, so a layer that calls `naive_retention(q, k, v)` or `parallel_forward(...)` in a
third-party file gets its nodes attributed to the caller's line. Within `full_stack_traces()`
every frame from the first `forward` on is kept (torch's, lasp_fx's and the standard
library's dropped), and
`graph.source_of` picks the deepest frame outside torch, lasp_fx and the standard library.
"""

from __future__ import annotations

import contextlib
import traceback

from torch.fx.proxy import TracerBase

from lasp_fx.passes.graph import is_library_path


def _from_first_forward(self, summary: traceback.StackSummary) -> traceback.StackSummary:
    start = next((i for i, f in enumerate(summary) if f.name == "forward"), None)
    if start is None:
        return traceback.StackSummary.from_list([])
    return traceback.StackSummary.from_list([f for f in summary[start:] if not is_library_path(f.filename)])


@contextlib.contextmanager
def full_stack_traces():
    """Within the block, tracers record every user frame below the first `forward`."""
    original = TracerBase._filter_traceback_frames
    TracerBase._filter_traceback_frames = _from_first_forward
    try:
        yield
    finally:
        TracerBase._filter_traceback_frames = original
