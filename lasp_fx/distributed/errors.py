"""The errors a sequence-parallel call raises when the ranks disagree, one fails, or one never answers.

After any of them the group's point-to-point channels are in an undefined state (a timed-out gloo
pair is closed; an NCCL communicator is aborted by its watchdog): destroy the process group and
start again, as after any collective error.
"""

from __future__ import annotations


class RankMismatchError(ValueError):
    """The ranks of the group passed inputs that do not form one sequence (lengths, dtypes, heads, ...)."""


class DistributedError(RuntimeError):
    """Another rank failed, died or did not answer within the call's timeout."""


class RankFailedError(DistributedError):
    """Another rank raised inside lasp_fx's exchange and told the others (its message names it)."""


class ExchangeTimeoutError(DistributedError):
    """No message from a peer rank within `timeout` seconds, or its connection closed (it died)."""
