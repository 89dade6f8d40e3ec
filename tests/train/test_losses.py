"""The loss modes: each against a naive implementation written from its paper, and against TRL's
loss function where TRL has one, in float64 on identical log-probs; the registry; a throw-away mode.

The naive versions start from per-token log-probs (a list per answer), as the papers write them:

    lp(y)   = (1/|y|) sum_t log pi(y_t | x, y_<t)                    (length-normalised)
    SimPO   = -log sigmoid( beta * (lp(y_w) - lp(y_l)) - gamma )
    LOGO    = -log sigmoid( beta * (lp(y_w) - (1/M) sum_j lp(y_l^j)) - gamma )
    ORPO    = -beta * log sigmoid( log odds(y_w) - log odds(y_l) ),  odds(y) = P(y) / (1 - P(y)),  P(y) = exp(lp(y))

The modes receive summed log-probs and token counts (what the packed forward produces).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from longpo.train.loss import PairLogps, PreferenceOutput
from longpo.train.losses import MODES, NO_REFERENCE, Defaults, LossMode

F64 = torch.float64


def token_logps(num_pairs: int, num_rejected: int, seed: int) -> tuple[list, list]:
    """Per-token log-probs: chosen[p] a (n,) tensor, rejected[p][j] a (n,) tensor, lengths 1..9, leaves."""
    g = torch.Generator().manual_seed(seed)

    def answer():
        n = int(torch.randint(1, 10, (1,), generator=g))
        return (-torch.rand(n, generator=g, dtype=F64) * 3 - 0.01).requires_grad_()

    return [answer() for _ in range(num_pairs)], [[answer() for _ in range(num_rejected)] for _ in range(num_pairs)]


def packed(chosen: list, rejected: list) -> PairLogps:
    """What `pair_stats` hands a mode: sums and counts; rejected (P,) for one answer, (P, M) for several."""
    m = len(rejected[0])
    rej = torch.stack([torch.stack([r.sum() for r in rs]) for rs in rejected])
    rej_n = torch.tensor([[len(r) for r in rs] for rs in rejected])
    return PairLogps(chosen=torch.stack([c.sum() for c in chosen]), rejected=rej[:, 0] if m == 1 else rej,
                     chosen_tokens=torch.tensor([len(c) for c in chosen]),
                     rejected_tokens=rej_n[:, 0] if m == 1 else rej_n)


def lp(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.mean()


def naive_logo(chosen, rejected, beta, gamma):
    out = []
    for c, rs in zip(chosen, rejected):
        z = beta * (lp(c) - sum(lp(r) for r in rs) / len(rs)) - gamma
        out.append(torch.log1p(torch.exp(-z)))  # -log sigmoid(z)
    return torch.stack(out)


def naive_simpo(chosen, rejected, beta, gamma):
    return torch.stack([sum(torch.log1p(torch.exp(-(beta * (lp(c) - lp(r)) - gamma))) for r in rs) / len(rs)
                        for c, rs in zip(chosen, rejected)])


def naive_orpo(chosen, rejected, beta):
    def log_odds(t):
        return lp(t) - torch.log(1 - torch.exp(lp(t)))

    return torch.stack([sum(beta * torch.log1p(torch.exp(-(log_odds(c) - log_odds(r)))) for r in rs) / len(rs)
                        for c, rs in zip(chosen, rejected)])


def check_values_and_grads(got: torch.Tensor, want: torch.Tensor, leaves: list) -> None:
    assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.linspace(0.5, 1.5, got.numel(), dtype=F64)
    for a, b in zip(torch.autograd.grad((got * w).sum(), leaves), torch.autograd.grad((want * w).sum(), leaves)):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_rejected", [1, 2, 3])
def test_logo_equals_the_paper_with_m_rejected_answers(num_rejected):
    chosen, rejected = token_logps(5, num_rejected, seed=num_rejected)
    out = MODES["logo"].losses(packed(chosen, rejected), None, beta=10.0, margin=3.0)
    check_values_and_grads(out.losses, naive_logo(chosen, rejected, 10.0, 3.0), chosen + sum(rejected, []))
    assert_close(out.chosen_rewards, 10.0 * torch.stack([lp(c) for c in chosen]).detach())
    assert not out.chosen_rewards.requires_grad


@pytest.mark.parametrize("num_rejected", [1, 3])
def test_simpo_equals_the_paper(num_rejected):
    chosen, rejected = token_logps(6, num_rejected, seed=10 + num_rejected)
    out = MODES["simpo"].losses(packed(chosen, rejected), None, beta=2.0, margin=1.0)
    check_values_and_grads(out.losses, naive_simpo(chosen, rejected, 2.0, 1.0), chosen + sum(rejected, []))


@pytest.mark.parametrize("num_rejected", [1, 2])
def test_orpo_equals_the_paper(num_rejected):
    chosen, rejected = token_logps(6, num_rejected, seed=20 + num_rejected)
    out = MODES["orpo"].losses(packed(chosen, rejected), None, beta=0.1, margin=0.0)
    check_values_and_grads(out.losses, naive_orpo(chosen, rejected, 0.1), chosen + sum(rejected, []))


def test_orpo_is_finite_where_an_answer_is_almost_certain():
    """log(1 - P) near P = 1 is where a naive log1p(-exp(x)) cancels: the branch at -ln 2 keeps it finite."""
    logps = PairLogps(torch.tensor([-1e-9, -5.0], dtype=F64), torch.tensor([-2.0, -1e-12], dtype=F64),
                      torch.tensor([1, 3]), torch.tensor([4, 1]))
    assert torch.isfinite(MODES["orpo"].losses(logps, None, beta=0.1, margin=0.0).losses).all()


def test_longpo_and_dpo_take_m_rejected_answers_as_m_pairs_sharing_the_chosen_one():
    """mean_j -log sigmoid(beta * ((pi_c - ref_c) - (pi_r^j - ref_r^j))); M = 1 is the plain pair loss."""
    pc, pr = torch.tensor([-4.0, -2.0], dtype=F64), torch.tensor([[-5.0, -3.0], [-1.0, -2.5]], dtype=F64)
    rc, rr = torch.tensor([-4.5, -2.0], dtype=F64), torch.tensor([[-4.0, -3.5], [-2.0, -2.0]], dtype=F64)
    beta = 0.5
    for name in ("longpo", "dpo"):
        out = MODES[name].losses(PairLogps(pc, pr), PairLogps(rc, rr), beta=beta, margin=0.0)
        want = [sum(math.log1p(math.exp(-beta * ((pc[p] - rc[p]) - (pr[p, j] - rr[p, j])))) for j in range(2)) / 2
                for p in range(2)]
        assert_close(out.losses, torch.tensor(want, dtype=F64))


# ---------------------------------------------------------------------------------------- TRL


def trl_cpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float):
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    trainer = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=0.0,
                              accelerator=SimpleNamespace(device=chosen.device))
    return cpo.CPOTrainer.cpo_loss(trainer, chosen, rejected)


def test_simpo_equals_trl_cpo_simpo_loss():
    chosen, rejected = token_logps(8, 1, seed=31)
    x = packed(chosen, rejected)
    ours = MODES["simpo"].losses(x, None, beta=2.0, margin=1.0)
    avg_c, avg_r = x.chosen / x.chosen_tokens, x.rejected / x.rejected_tokens  # TRL's average_log_prob=True
    losses, chosen_rewards, rejected_rewards = trl_cpo_loss(avg_c, avg_r, beta=2.0, gamma=1.0)
    assert_close(ours.losses, losses, rtol=1e-12, atol=1e-12)
    assert_close(ours.chosen_rewards, chosen_rewards)
    assert_close(ours.rejected_rewards, rejected_rewards)


def test_logo_equals_trl_simpo_on_the_averaged_rejected_answers_as_the_official_trainer_calls_it():
    """The official LOGO trainer calls SimPO's loss on (lp(y_l^1) + lp(y_l^2)) / 2."""
    chosen, rejected = token_logps(8, 2, seed=32)
    x = packed(chosen, rejected)
    ours = MODES["logo"].losses(x, None, beta=10.0, margin=3.0)
    avg_r = (x.rejected / x.rejected_tokens).mean(dim=1)
    losses, _, rejected_rewards = trl_cpo_loss(x.chosen / x.chosen_tokens, avg_r, beta=10.0, gamma=3.0)
    assert_close(ours.losses, losses, rtol=1e-12, atol=1e-12)
    assert_close(ours.rejected_rewards, rejected_rewards)


def test_orpo_equals_trl_odds_ratio_loss():
    """TRL casts to float32 inside odds_ratio_loss, so the match is to float32 rounding; TRL returns
    beta * log sigmoid(.) and subtracts its mean, the mode returns the per-pair loss itself."""
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    chosen, rejected = token_logps(8, 1, seed=33)
    x = packed(chosen, rejected)
    avg_c, avg_r = x.chosen / x.chosen_tokens, x.rejected / x.rejected_tokens
    trainer = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=avg_c.device))
    trl_losses, trl_chosen, trl_rejected, _, _ = orpo.ORPOTrainer.odds_ratio_loss(trainer, avg_c, avg_r)
    ours = MODES["orpo"].losses(x, None, beta=0.1, margin=0.0)
    assert_close(ours.losses, -trl_losses.to(F64), rtol=1e-6, atol=1e-7)
    assert_close(ours.chosen_rewards, trl_chosen.to(F64), rtol=1e-6, atol=1e-7)
    assert_close(ours.rejected_rewards, trl_rejected.to(F64), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- registry


def test_every_mode_declares_what_the_trainer_asks():
    from longpo.train.config import NLL_MODES
    from longpo.train.metrics import StepSums

    for name, mode in MODES.items():
        assert mode.name == name and mode.summary and mode.formula and mode.source, name
        assert mode.reference in ("short prompt, precomputed in the records",
                                  "long prompt, a frozen copy of the initial policy", "none"), name
        assert mode.defaults.nll_mode in NLL_MODES, name
        StepSums().metrics(mode.metrics)  # every declared metric is one the step sums
        if mode.preference:
            assert mode.rejected[0] >= 1, f"{name}: a preference term needs a rejected answer"


def test_the_trainer_names_no_loss_mode():
    """`grep '"sft"\\|"dpo"\\|"longpo"' longpo/train` finds the modes' own files only."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "longpo" / "train"
    hits = [f"{p}: {needle}" for p in root.rglob("*.py") if p.parent.name != "losses"
            for needle in ('"sft"', '"dpo"', '"longpo"') if needle in p.read_text()]
    assert not hits, hits


def test_a_mode_added_in_the_test_alone_trains_one_step(tmp_path, monkeypatch):
    """A throw-away mode (a hinge on the summed log-probs, no reference) added to the registry dict here:
    the config accepts it, the trainer asks it for its reference and loss, and one step runs."""
    from accelerate.state import AcceleratorState, GradientState

    from longpo.train.trainer import Config, Trainer

    calls = []

    def hinge(policy, reference, beta, margin):
        assert reference is None, "a NO_REFERENCE mode is handed no reference"
        calls.append(policy.chosen.shape[0])
        z = beta * (policy.chosen - policy.rejected)
        return PreferenceOutput(losses=torch.relu(margin - z), chosen_rewards=(beta * policy.chosen).detach(),
                                rejected_rewards=(beta * policy.rejected).detach())

    mode = LossMode(name="hinge-test", summary="a hinge, for this test", formula="max(0, γ - β(log π(y_w) - log π(y_l)))",
                    reference=NO_REFERENCE, rejected=(1, 1), losses=hinge, metrics=("pref_loss", "rewards/accuracy"),
                    defaults=Defaults(beta=0.1, lam=1.0, nll_weight=0.0, nll_mode="off", margin=100.0),
                    source="this test")
    monkeypatch.setitem(MODES, mode.name, mode)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    trainer = Trainer(Config(loss="hinge-test", output_dir=str(tmp_path), tiny_records=4, max_steps=1,
                             pairs_per_micro_batch=2, gradient_accumulation_steps=1, progress_bar=False,
                             optimizer="adamw", learning_rate=1e-3, warmup_ratio=0.0, max_length=4096))
    assert trainer.reference is None and trainer.cfg.margin == 100.0
    result = trainer.train()
    row = result["last"]
    assert calls == [2] and result["steps"] == 1
    assert set(row) >= {"pref_loss", "rewards/accuracy"} and "rewards/margin" not in row
    assert row["pref_loss"] > 0 and math.isfinite(row["loss"]) and row["nll"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["logo", "simpo", "orpo"])
def test_each_new_mode_trains_a_tiny_model_two_steps(tmp_path, name):
    """The length-normalised modes through the whole trainer: token counts from the packed forward, no
    reference model loaded, the mode's defaults in the resolved config, finite losses, weights moved."""
    from accelerate.state import AcceleratorState, GradientState

    from longpo.train.trainer import Config, Trainer

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    trainer = Trainer(Config(loss=name, output_dir=str(tmp_path), tiny_records=4, max_steps=2, pairs_per_micro_batch=2,
                             gradient_accumulation_steps=1, progress_bar=False, optimizer="adamw",
                             learning_rate=1e-3, warmup_ratio=0.0, max_length=4096))
    assert trainer.reference is None and trainer.cfg.beta == MODES[name].defaults.beta
    result = trainer.train()
    assert result["steps"] == 2 and math.isfinite(result["last"]["loss"]) and result["last"]["grad_norm"] > 0
    assert "resolved_config.yaml" in {p.name for p in tmp_path.iterdir()}


def test_a_pair_with_equal_answers_leaves_the_preference_mean_and_is_counted(tmp_path):
    """chosen == rejected: log pi(y_w) = log pi(y_l), so every mode's preference loss is a constant of the
    pair with zero gradient. The trainer leaves such a pair out of the preference mean (it would only
    shrink the others' gradient) and counts it: simpo (no NLL) on records {a, b, c, equal} takes the
    same step as on {a, b, c}."""
    import json

    from accelerate.state import AcceleratorState, GradientState

    from longpo.toy.run import prepare_tiny_run, tiny_run_paths
    from longpo.train.trainer import Config, Trainer

    prepare_tiny_run(str(tmp_path), 4)
    model_dir, records_file = tiny_run_paths(str(tmp_path))
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    for turn in records[3]["turns"]:
        turn["rejected"], turn["ref_rejected_logp"] = turn["chosen"], turn["ref_chosen_logp"]
    rows = []
    for name, subset in (("with", records), ("without", records[:3])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in subset))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        result = Trainer(Config(loss="simpo", model=str(model_dir), train_file=str(path), output_dir=str(tmp_path / name),
                                max_steps=1, pairs_per_micro_batch=len(subset), gradient_accumulation_steps=1,
                                progress_bar=False, optimizer="sgd", learning_rate=1e-2, warmup_ratio=0.0,
                                max_length=4096, dtype="float64")).train()
        rows.append(result["last"])
    with_equal, without = rows
    assert with_equal["equal_answer_pairs"] == 1 and without["equal_answer_pairs"] == 0
    assert with_equal["pairs"] == 4 and without["pairs"] == 3
    assert with_equal["loss"] == pytest.approx(without["loss"], rel=1e-9)
    assert with_equal["pref_loss"] == pytest.approx(without["pref_loss"], rel=1e-9)
    assert with_equal["grad_norm"] == pytest.approx(without["grad_norm"], rel=1e-7)


def _train_one_step(tmp_path, name: str, records: list, **overrides) -> dict:
    import json

    from accelerate.state import AcceleratorState, GradientState

    from longpo.toy.run import tiny_run_paths
    from longpo.train.trainer import Config, Trainer

    model_dir, _ = tiny_run_paths(str(tmp_path))
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = dict(model=str(model_dir), train_file=str(path), output_dir=str(tmp_path / name), max_steps=1,
               pairs_per_micro_batch=len(records), gradient_accumulation_steps=1, progress_bar=False,
               optimizer="sgd", learning_rate=1e-2, warmup_ratio=0.0, max_length=4096, dtype="float64")
    return Trainer(Config(**(cfg | overrides))).train()["last"]


@pytest.mark.parametrize("loss", ["longpo", "dpo"])
def test_m_rejected_answers_train_as_m_pairs_sharing_the_chosen_one(tmp_path, loss):
    """longpo (precomputed short-prompt reference) and dpo (a frozen copy on the long prompt, run on the
    packed (P, M) row), no NLL, on records holding M = 2 rejected answers per turn takes the same step as on the 2M
    records that each hold one of them: M pairs (record, j) sharing the chosen answer, each in the preference
    mean. A rejected answer equal to the chosen one leaves its (record, j) out and is counted."""
    import copy
    import json

    from longpo.toy.run import prepare_tiny_run, tiny_run_paths

    prepare_tiny_run(str(tmp_path), 3)
    records = [json.loads(line) for line in tiny_run_paths(str(tmp_path))[1].read_text().splitlines()]
    donor = records[2]["turns"]
    several, single = [], []
    for r, record in enumerate(records[:2]):
        record = copy.deepcopy(record)
        for t, turn in enumerate(record["turns"]):
            other = donor[t % len(donor)]
            second = (turn["chosen"], turn["ref_chosen_logp"]) if r == 1 else (other["rejected"], other["ref_rejected_logp"])
            turn["rejected"], turn["ref_rejected_logp"] = ([turn["rejected"], second[0]],
                                                           [turn["ref_rejected_logp"], second[1]])
        several.append(record)
        for j in range(2):
            one = copy.deepcopy(record)
            one["id"] = f"{record['id']}-{j}"
            for turn in one["turns"]:
                turn["rejected"], turn["ref_rejected_logp"] = turn["rejected"][j], turn["ref_rejected_logp"][j]
            single.append(one)
    common = dict(nll_weight=0.0, lam=1.0, beta=0.5, loss=loss)
    many = _train_one_step(tmp_path, "several", several, **common)
    ones = _train_one_step(tmp_path, "single", single, **common)
    assert many["pairs"] == 2 and ones["pairs"] == 4  # records
    assert many["equal_answer_pairs"] == ones["equal_answer_pairs"] == 1  # record 1's second answer
    for key in ("loss", "pref_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy"):
        assert many[key] == pytest.approx(ones[key], rel=1e-9), key
    assert many["grad_norm"] == pytest.approx(ones["grad_norm"], rel=1e-7)
    if loss == "longpo":  # logo averages the M answers inside one term per record: record 1 keeps its term
        assert _train_one_step(tmp_path, "logo", several, loss="logo")["equal_answer_pairs"] == 0


def test_a_mode_refuses_data_outside_its_rejected_range_at_load(tmp_path, monkeypatch):
    """A mode that takes one rejected answer refuses records holding two, in one line naming the record's
    file:line, M, the mode and what to do; a file mixing M = 1 and M = 2 is refused for every mode."""
    import json
    from dataclasses import replace

    from longpo.errors import InputError
    from longpo.toy.run import prepare_tiny_run, tiny_run_paths

    prepare_tiny_run(str(tmp_path), 2)
    records = [json.loads(line) for line in tiny_run_paths(str(tmp_path))[1].read_text().splitlines()]
    for turn in records[1]["turns"]:
        turn["rejected"], turn["ref_rejected_logp"] = [turn["rejected"], turn["chosen"]], [-1.0, -2.0]
    monkeypatch.setitem(MODES, "one-only", replace(MODES["simpo"], name="one-only", rejected=(1, 1)))
    with pytest.raises(InputError, match=r"two\.jsonl:1: records with 2 rejected answer\(s\) per turn, "
                                         r"loss=one-only takes 1\.\.1; regenerate with num_rejected"):
        _train_one_step(tmp_path, "two", [records[1]], loss="one-only")
    with pytest.raises(InputError, match=r"mixed\.jsonl:2: a record with 2 rejected answer\(s\) per turn, .*mixed"
                                         r"\.jsonl:1 holds 1; a run packs one number"):
        _train_one_step(tmp_path, "mixed", records)


@pytest.mark.parametrize("name", [n for n, m in MODES.items() if m.preference])
def test_an_answer_equal_to_the_chosen_one_gives_no_preference_gradient(name):
    """The claim behind leaving equal pairs out (docs/stages/generate.md): when the rejected answer is the
    chosen one, policy and reference log-probs are the same on both sides, and every mode's preference
    loss has zero gradient with respect to them (a constant of the pair); a different answer has some."""
    mode = MODES[name]
    theta = torch.tensor([-7.0, -11.0], dtype=F64, requires_grad=True)  # log pi of two different answers
    tokens = torch.tensor([3, 3])
    ref = PairLogps(chosen=torch.tensor([-6.0], dtype=F64), rejected=torch.tensor([-6.0], dtype=F64))
    for rejected, zero in ((theta[0], True), (theta[1], False)):
        policy = PairLogps(chosen=theta[:1], rejected=rejected.reshape(1), chosen_tokens=tokens[:1],
                           rejected_tokens=tokens[:1])
        out = mode.losses(policy, ref, mode.defaults.beta, mode.defaults.margin)
        (grad,) = torch.autograd.grad(out.losses.sum(), theta)
        assert (grad.abs().max() == 0) == zero, f"{name}: gradient {grad.tolist()} for rejected {'=' if zero else '!='} chosen"
