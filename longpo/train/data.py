"""Records -> optimizer steps -> packed micro-batches, deterministically from the seed.

An epoch visits the records in a seeded permutation (`epoch_order`). Optimizer step s of the
epoch takes the next `pairs_per_step = pairs_per_micro_batch * accumulation * world` records;
each rank takes its contiguous share, tokenises it (lazily: a 128K-token corpus does not fit in
memory as ids), drops pairs longer than `max_length` (counted and named) and packs the rest into
micro-batches of `pairs_per_micro_batch` pairs. A rank whose share is short (end of epoch,
skipped pairs) is topped up with 3-token filler micro-batches of weight 0, so that every rank
runs exactly `accumulation` forward/backward passes per step (ZeRO-3 and FSDP collectives stay
aligned) and the accumulation boundary is the same on every rank.

The data position of a checkpoint is therefore just (epoch, step in epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from longpo.data.records import RecordError, TokenizedPair, tokenize_pair
from longpo.errors import InputError
from longpo.train.config import Config
from longpo.train.losses import LossMode
from longpo.train.packing import PackedBatch, pack_pairs


def epoch_order(num_records: int, seed: int, epoch: int) -> list[int]:
    """The record order of one epoch: a permutation that depends only on (seed, epoch)."""
    order = list(range(num_records))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return order


def steps_per_epoch(num_records: int, pairs_per_step: int) -> int:
    return -(-num_records // pairs_per_step)


def rank_share(order: list[int], step_in_epoch: int, pairs_per_step: int, rank: int, world: int) -> list[int]:
    """Record indices rank `rank` trains on at this step (a contiguous slice of the step's records)."""
    step = order[step_in_epoch * pairs_per_step : (step_in_epoch + 1) * pairs_per_step]
    per_rank = pairs_per_step // world
    return step[rank * per_rank : (rank + 1) * per_rank]


def sequence_length(pair: TokenizedPair) -> int:
    """The longest sequence the model sees for this pair: the prefix plus the longest branch."""
    return len(pair.prefix) + max(len(pair.chosen), *(len(ids) for ids, _ in pair.rejected_branches()))


@dataclass
class MicroBatch:
    batch: PackedBatch
    weight: float  # 1.0, or 0.0 for a filler that only keeps ranks in step


def tokenize_share(tokenizer: Any, records: list[dict | TokenizedPair], max_length: int,
                   skip_overlong: bool) -> tuple[list[TokenizedPair], list[tuple[str, int]]]:
    """Tokenise records (released pairs come tokenised); return the pairs that fit and (id, length) of the rest."""
    pairs, skipped = [], []
    for record in records:
        pair = record if isinstance(record, TokenizedPair) else tokenize_pair(tokenizer, record)
        length = sequence_length(pair)
        if length <= max_length:
            pairs.append(pair)
        elif skip_overlong:
            skipped.append((pair.id, length))
        else:
            raise RecordError(
                f"record {pair.id!r}: {length} tokens (prefix + longest answer) exceeds max_length={max_length}; "
                f"raise max_length, drop the record, or set skip_overlong=true to skip and count such records"
            )
    return pairs, skipped


def check_some_pair_fits(tokenizer: Any, records: Any, max_length: int, limit: int) -> bool:
    """Raise `InputError` when none of the first `limit` records fits `max_length` and they are all
    the records: such a run would train nothing and export the start model unchanged. Stops at the
    first pair that fits (one record in a normal run). Returns False when the first `limit` records
    are all too long but more remain unread (the trainer then checks again before its export)."""
    lengths = []
    for i in range(min(len(records), limit)):
        record = records[i]
        pair = record if isinstance(record, TokenizedPair) else tokenize_pair(tokenizer, record)
        lengths.append(sequence_length(pair))
        if lengths[-1] <= max_length:
            return True
    if len(lengths) < len(records):
        return False
    raise InputError(no_pair_fits(len(records), lengths, max_length))


def no_pair_fits(num_records: int, lengths: list[int], max_length: int) -> str:
    """The one-line message of a run in which no pair fits `max_length`."""
    if not lengths:
        return f"no pair to train on: {num_records} record(s), none read within max_length={max_length}"
    seen = "" if len(lengths) == num_records else f" ({len(lengths)} of them read)"
    return (f"no pair fits max_length={max_length}: {num_records} record(s){seen}, pair lengths {min(lengths)}.."
            f"{max(lengths)} tokens (prefix + longest answer); max_length >= {min(lengths)} trains the shortest, "
            f">= {max(lengths)} all of them")


def check_rejected_answers(mode: LossMode, counts: dict[int, str]) -> int:
    """M, the rejected answers per turn of every record, checked against the mode's `rejected` range; an
    `InputError` naming the first record where the data mixes several M or the mode cannot take it."""
    if len(counts) > 1:
        (m1, w1), (m2, w2) = list(counts.items())[:2]
        raise InputError(f"{w2}: a record with {m2} rejected answer(s) per turn, {w1} holds {m1}; a run packs one "
                         f"number of rejected answers: train on files of one num_rejected")
    if not counts:
        return 1
    (m, where), = counts.items()
    reason = mode.refuse_rejected(m, where)
    if reason:
        raise InputError(reason)
    return m


def filler_pair(tokenizer: Any) -> TokenizedPair:
    """A 3-token pair for weight-0 filler micro-batches."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    return TokenizedPair(id="<filler>", prefix=[bos], chosen=[eos], chosen_mask=[True], rejected=[eos],
                         rejected_mask=[True], ref_chosen_logp=0.0, ref_rejected_logp=0.0)


def micro_batches(pairs: list[TokenizedPair], pairs_per_micro_batch: int, accumulation: int, nll_mode: str,
                  filler: TokenizedPair, pad_token_id: int = 0) -> list[MicroBatch]:
    """Exactly `accumulation` micro-batches: the pairs packed `pairs_per_micro_batch` at a time, then fillers."""
    out = []
    for i in range(0, len(pairs), pairs_per_micro_batch):
        out.append(MicroBatch(pack_pairs(pairs[i : i + pairs_per_micro_batch], nll_mode, pad_token_id=pad_token_id), 1.0))
    assert len(out) <= accumulation, f"{len(pairs)} pairs make more than {accumulation} micro-batches"
    while len(out) < accumulation:
        out.append(MicroBatch(pack_pairs([filler], nll_mode, pad_token_id=pad_token_id), 0.0))
    return out


def step_shape(cfg: Config, world: int) -> dict:
    """The optimizer step of `cfg` on `world` processes: pairs (micro-batch x accumulation x data-parallel
    groups, a group being sp_size processes) and the most tokens it holds (max_length x pairs)."""
    if world % cfg.sp_size:
        raise ValueError(f"sp_size={cfg.sp_size} must divide the {world} process(es)")
    pairs = cfg.pairs_per_micro_batch * cfg.gradient_accumulation_steps * (world // cfg.sp_size)
    return {"pairs_per_step": pairs, "tokens_per_step": cfg.max_length * pairs, "data_parallel": world // cfg.sp_size}
