"""Detection on the corpus, on every device: the expected matches, near-misses with reasons, no false positives."""

import pytest

from lasp_fx.passes.detect.report import InspectReport
from lasp_fx.passes.match import NearMiss
from tests.corpus import CORPUS
from tests.corpus.harness import SEQ, converted

NAMES = list(CORPUS)


@pytest.mark.parametrize("name", NAMES)
def test_expected_matches(name, device):
    _, _, report, _ = converted(name, device)
    expected = CORPUS[name][1]
    got = [(m.family, m.decay, m.normalised) for m in report.matches]
    assert got == expected, f"{name}:\n{report}"
    for m in report.matches:
        assert m.source.startswith("tests/corpus/") and m.code, m
        assert m.seq_len == SEQ and m.max_error < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_expected_near_misses(name, device):
    _, _, report, _ = converted(name, device)
    assert [n.family for n in report.near_misses] == CORPUS[name][2], f"{name}:\n{report}"
    for n in report.near_misses:
        assert n.reason and n.source.startswith("tests/corpus/"), n


@pytest.mark.parametrize(
    "name, words",
    [
        ("bidirectional_linear", "not masked"),
        ("anti_causal_triu", "anti-causal"),
        ("learnable_temperature", "temperature"),
        ("softmax_manual", "softmax"),
        ("detached_eps_row_norm", "not the same gradients"),
        ("where_row_norm", "not the same function"),
        ("feature_sum_scores", "write them as a matmul or an einsum"),
        ("per_channel_decay_scores", "a decay per feature channel"),
    ],
)
def test_near_miss_reason_says_why(name, words, device):
    _, _, report, _ = converted(name, device)
    assert any(words in n.reason for n in report.near_misses), report


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("gqa_expand_reshape", "kv_heads", 4),  # the feature map runs after the repeat: k is per head
        ("mqa_repeat_interleave", "kv_heads", 1),
        ("retnet_pow_buffer", "decay_learnable", False),
        ("learnable_exp_decay", "decay_learnable", True),
        ("gate_log_cumsum", "decay", "gate"),
        ("einsum_tril_heads_dim2", "scale", 8 ** -0.5),
        ("bmm_where_scale_on_k", "scale", 0.5),
        ("mqa_repeat_interleave", "scale", 1 / 8),
        ("cumsum_einsum_normalised", "norm_eps", 1e-5),
        ("rowsum_normalised", "norm_eps", 1e-6),
    ],
)
def test_match_description(name, field, value, device):
    _, _, report, _ = converted(name, device)
    got = getattr(report.matches[0], field)
    assert got == pytest.approx(value, rel=1e-6) if isinstance(value, float) else got == value


def test_report_prints_a_table(device):
    _, _, report, _ = converted("hybrid_linear_softmax", device)
    text = str(report)
    assert "match" in text and "near-miss" in text and "tests/corpus/decay_masks.py:" in text
    assert "1 match(es), 1 near-miss(es)" in text


def test_near_miss_lines_group_repeats_and_say_how_to_see_the_rest():
    def near(line, reason="why"):
        return NearMiss("quadratic", f"model.py:{line}", "code", "layer", reason)

    # a loop unrolled 5 times repeats line 7; 9 more distinct lines pass the limit of 8
    report = InspectReport(near_misses=[near(3, "not causal"), *(near(7) for _ in range(5)),
                                        *(near(20 + i) for i in range(9))])
    lines = report.near_miss_lines(limit=8)
    assert lines[0] == "attention not rewritten at model.py:3: not causal"
    assert lines[1] == "attention not rewritten at model.py:7: why (x5)"
    assert lines[2:8] == [f"attention not rewritten at model.py:{20 + i}: why" for i in range(6)]
    assert lines[8].startswith("and 3 more near-miss line(s)") and "lasp-fx inspect" in lines[8]
    assert len(lines) == 9
    assert len(report.near_miss_lines(limit=20)) == 11  # under the limit: every line, no "more"
