"""`longpo reference`: values equal a direct forward of the original model on the short prompt."""

import json

import pytest
import torch
from torch.testing import assert_close

from longpo.backends.hf import HFBackend
from longpo.data.records import read_records, tokenize_short
from longpo.data.reference import Config, add_reference_logps, run
from longpo.toy.tiny import build_tiny_model
from tests.conftest import make_record


def direct_logp(model, tokenizer, chunk, question, answer) -> float:
    """sum_j log softmax(model(ids)[j-1])[ids[j]] over response tokens j, with full logits."""
    ids, mask = tokenize_short(tokenizer, chunk, question, answer)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    logps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return float(logps[torch.tensor(mask[1:])].sum())


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("llama", dtype=torch.float64, seed=5)


def test_reference_equals_direct_forward(tokenizer, model):
    records = [make_record(f"r{i}", n_turns=2, seed=i) for i in range(2)]
    add_reference_logps(HFBackend(model, tokenizer), tokenizer, records)
    for rec in records:
        for turn in rec["turns"]:
            for branch in ("chosen", "rejected"):
                expected = direct_logp(model, tokenizer, turn["chunk"], turn["question"], turn[branch])
                assert_close(turn[f"ref_{branch}_logp"], expected, rtol=1e-12, atol=1e-10)


def test_reference_scores_every_one_of_m_rejected_answers(tokenizer, model):
    """M = 3 rejected answers: `ref_rejected_logp` is a list of M, value j the short-prompt score of answer
    j (the records then validate with require_reference and train)."""
    from longpo.data.records import validate_record

    records = [make_record(f"r{i}", n_turns=2, seed=i) for i in range(2)]
    for rec in records:
        for t, turn in enumerate(rec["turns"]):
            turn["rejected"] = [turn["rejected"], f"Perhaps {t} vaults.", "The code is short."]
    add_reference_logps(HFBackend(model, tokenizer), tokenizer, records)
    for rec in records:
        validate_record(rec, rec["id"], require_reference=True)
        for turn in rec["turns"]:
            expected = [direct_logp(model, tokenizer, turn["chunk"], turn["question"], a) for a in turn["rejected"]]
            assert len(turn["ref_rejected_logp"]) == 3
            assert_close(turn["ref_rejected_logp"], expected, rtol=1e-12, atol=1e-10)


class CountingBackend(HFBackend):
    calls = 0

    def score(self, sequences, masks):
        CountingBackend.calls += len(sequences)
        return super().score(sequences, masks)


def test_cli_run_from_saved_model_and_resume(tmp_path, tokenizer, model):
    model_dir = tmp_path / "original"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    records = [make_record(f"r{i}", seed=i) for i in range(3)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = Config(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), model=str(model_dir),
                 backend_args={"dtype": "float64"}, records_per_call=1, progress=False)
    # An interrupted earlier run: one complete row, then a torn one.
    first = add_reference_logps(HFBackend(model, tokenizer), tokenizer, [dict(records[0])])[0]
    (tmp_path / "out.jsonl.partial").write_text(json.dumps(first) + "\n" + '{"id": "r1", "docu')
    CountingBackend.calls = 0
    counts = run(cfg, backend_factory=lambda: CountingBackend(str(model_dir), dtype="float64"))
    assert counts == {"records": 3, "resumed": 1, "scored": 2, "tokens": counts["tokens"]}
    assert CountingBackend.calls == 4  # two records x (chosen, rejected), nothing recomputed
    out = read_records(tmp_path / "out.jsonl", require_reference=True)
    assert [r["id"] for r in out] == ["r0", "r1", "r2"]
    turn = out[2]["turns"][0]
    assert_close(turn["ref_chosen_logp"], direct_logp(model, tokenizer, turn["chunk"], turn["question"], turn["chosen"]),
                 rtol=1e-12, atol=1e-10)
    assert not (tmp_path / "out.jsonl.partial").exists()
    assert (tmp_path / "out.jsonl.reference_config.yaml").exists()


def test_missing_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(make_record()) + "\n")
    cfg = Config(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "o.jsonl"), model=str(tmp_path / "nope"),
                 progress=False)
    with pytest.raises(FileNotFoundError, match="not a local"):
        run(cfg)
