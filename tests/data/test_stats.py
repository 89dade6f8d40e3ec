"""Generation stats (reference log-probs of chosen vs rejected, merging) and `longpo generate inspect`."""

import json

import pytest

from longpo.cli import main as cli_main
from longpo.data.inspect import inspect_pairs, shorten
from longpo.data.stats import add_reference_stats, merge_stats, new_stats, stats_json, summary
from tests.conftest import make_record


def records_with_reference():
    """Pair 1: chosen -10 over 5 tokens (-2/token), rejected -6 over 2 (-3/token): the shorter rejected
    wins in sum, the chosen per token. Pair 2: chosen -4 over 4 (-1), rejected -8 over 4 (-2): chosen both."""
    a, b = make_record("a", seed=1), make_record("b", seed=2)
    a["turns"][0].update(ref_chosen_logp=-10.0, ref_rejected_logp=-6.0)
    b["turns"][0].update(ref_chosen_logp=-4.0, ref_rejected_logp=-8.0, chosen_cut=True)
    a["meta"], b["meta"] = {"answer_tokens": [[5, 2]]}, {"answer_tokens": [[4, 4]]}
    return [a, b]


def test_reference_stats_count_wins_each_way():
    stats = new_stats()
    add_reference_stats(stats, records_with_reference())
    ref = stats["reference"]
    assert ref["pairs"] == 2 and ref["chosen_wins_sum"] == 1 and ref["chosen_wins_per_token"] == 2
    assert ref["chosen_logp"] == -14.0 and ref["rejected_logp_per_token"] == pytest.approx(-5.0)
    text = summary(stats)
    assert "mean summed: chosen -7.00, rejected -7.00 (chosen higher in 50%)" in text
    assert "mean per token: chosen -1.500, rejected -2.500 (chosen higher in 100%)" in text


def test_merge_keeps_negative_sums_and_new_keys():
    """Counter addition drops non-positive values; log-prob sums are negative and must survive a merge."""
    part = new_stats()
    add_reference_stats(part, records_with_reference())
    part["seconds"]["chosen"] = 1.5
    old = {"documents": 3, "dropped": {"refusal": 1}}  # stats of a run before these keys existed
    total = merge_stats(merge_stats(new_stats(), old), stats_json(part))
    total = merge_stats(total, stats_json(part))
    assert total["reference"]["chosen_logp"] == -28.0 and total["reference"]["pairs"] == 4
    assert total["documents"] == 3 and total["dropped"]["refusal"] == 1 and total["seconds"]["chosen"] == 3.0


@pytest.fixture
def folder(tmp_path):
    from longpo.files import atomic_write_json, atomic_write_jsonl

    records = records_with_reference() + [make_record(f"r{i}", n_turns=2, seed=i) for i in range(3)]
    atomic_write_jsonl(tmp_path / "records-s000-g000000.jsonl", records)
    stats = new_stats()
    stats.update(documents=5, pairs_kept=8, records=5)
    atomic_write_json(tmp_path / "stats.json", stats_json(stats))
    return tmp_path


def test_inspect_prints_stats_and_seeded_pairs_side_by_side(folder, capsys):
    text = inspect_pairs(folder, n=8, seed=0, width=200)
    assert "pairs kept 8 in 5 records" in text and "8 pairs in 5 records; 8 drawn with seed 0" in text
    # The reference comparison comes from the records (stats.json has none: reference added later).
    assert "chosen higher in 50%" in text
    assert "chosen (ref log-prob -4.00, -1.000/token over 4, cut at max_new_tokens)" in text
    assert "rejected (no reference log-prob)" in text
    assert text.count("question: According to the passage above, what is value") == 8
    side = [line for line in text.splitlines() if line.startswith("The value is")]
    assert side and all(" | I think it might be" in line for line in side)
    assert inspect_pairs(folder, n=3, seed=1) == inspect_pairs(folder, n=3, seed=1)
    assert cli_main(["generate", "inspect", str(folder), "--n", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == inspect_pairs(folder, n=3, seed=1)


def test_inspect_of_a_folder_without_pairs(tmp_path):
    from longpo.files import atomic_write_json

    stats = new_stats()
    stats.update(documents=2, question_replies=2, questions_unparsable=2)
    atomic_write_json(tmp_path / "stats.json", stats_json(stats))
    assert inspect_pairs(tmp_path).endswith("no records (no pair was kept)")
    assert json.loads((tmp_path / "stats.json").read_text())["documents"] == 2
    assert shorten("abcdefghij", 4) == "ab [... 6 characters ...] ij" and shorten("abc", 0) == "abc"


def test_inspect_of_a_records_file(folder):
    text = inspect_pairs(folder / "records-s000-g000000.jsonl", n=2)
    assert "pairs kept" not in text and "chosen higher in 50%" in text and "2 drawn with seed 0" in text
