"""Linear-attention layers written by other people (issue 20), each wrapped as a tiny LM.

Every model takes ids [B, T] and returns logits, or the loss when given labels: the interface of
`tests.helpers.workers_parallel`, so each runs under parallelize() on gloo ranks unchanged.
"""
