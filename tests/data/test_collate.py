"""jaxalign.data.collate: the batch schema, buckets, packing in lockstep, difference-model and KTO views."""

import numpy as np
import pytest

from jaxalign.data import DataConfig, DataError, prepare, select_bucket

SEQ_KEYS = ("input_ids", "loss_mask", "positions", "segment_ids")


def _cfg(**kw):
    kw.setdefault("max_length", 64)
    kw.setdefault("batch_size", 2)
    kw.setdefault("min_bucket", 16)
    kw.setdefault("shuffle", False)
    return DataConfig(**kw)


def test_preference_schema_shapes_and_dtypes(pairs, tok):
    data = prepare(pairs(4), tok, _cfg(batch_size=4))
    batch = next(data.batcher())
    B, T = batch["chosen_input_ids"].shape
    assert B == 4 and T in data.config.bucket_lengths()
    for side in ("chosen", "rejected"):
        for key in SEQ_KEYS:
            arr = batch[f"{side}_{key}"]
            assert arr.shape == (B, T) and arr.dtype == np.int32, key
    assert batch["example_mask"].dtype == np.int32 and batch["example_mask"].shape == (4, 1)
    assert batch["row_id"].dtype == np.int64 and batch["row_id"][:, 0].tolist() == [0, 1, 2, 3]


def test_unpacked_row_layout(pairs, tok):
    data = prepare(pairs(2), tok, _cfg())
    b = data.collate(data.units)
    ids, mask, pos, seg = (b[f"chosen_{k}"][0] for k in SEQ_KEYS)
    n_prompt = len(data.examples.prompt[0])
    n = n_prompt + len(data.examples.chosen[0])
    assert ids[:n].tolist() == data.examples.prompt[0].tolist() + data.examples.chosen[0].tolist()
    assert (ids[n:] == tok.pad_token_id).all()
    assert mask.tolist() == [0] * n_prompt + [1] * (n - n_prompt) + [0] * (len(ids) - n)
    assert pos[:n].tolist() == list(range(n)) and (pos[n:] == 0).all()
    assert (seg[:n] == 1).all() and (seg[n:] == 0).all()


def test_pad_falls_back_to_eos(make_tokenizer, pairs):
    tokenizer = make_tokenizer(pad=None)
    data = prepare(pairs(2), tokenizer, _cfg())
    b = data.collate(data.units)
    assert b["chosen_input_ids"][0, -1] == tokenizer.eos_token_id


def test_select_bucket_smallest_fitting():
    assert select_bucket(17, [16, 32, 64]) == 32
    assert select_bucket(16, [16, 32, 64]) == 16
    with pytest.raises(DataError):
        select_bucket(65, [16, 32, 64])


def test_batch_padded_to_bucket_of_longest_row_both_sides(pairs, tok):
    rows = pairs(2)
    rows[1]["rejected"] = "The quick brown fox jumps over the lazy dog. " * 3  # rejected side is the longest
    data = prepare(rows, tok, _cfg(buckets=[16, 32, 48, 64]))
    longest = len(data.examples.prompt[1]) + len(data.examples.rejected[1])
    assert 32 < longest <= 48
    b = data.collate(data.units)
    assert b["chosen_input_ids"].shape[1] == b["rejected_input_ids"].shape[1] == 48
    assert data.collate(data.units[:1])["chosen_input_ids"].shape[1] == 16


def test_packing_pairs_in_lockstep(pairs, tok):
    rows = pairs(9)
    for i in range(0, 9, 2):
        rows[i]["rejected"] = "Tell me a joke. Why did the chicken cross the road?"  # rejected sides differ in length
    data = prepare(rows, tok, _cfg(max_length=48, packing=True, max_segments_per_row=3, batch_size=1))
    assert len(data.units) < 9 and sum(len(u) for u in data.units) == 9
    assert max(len(u) for u in data.units) > 1
    for unit in data.units:
        b = data.collate([unit])
        assert b["example_mask"].shape == (1, 3)
        assert b["example_mask"][0].tolist() == [1] * len(unit) + [0] * (3 - len(unit))
        assert b["row_id"][0, : len(unit)].tolist() == [int(data.examples.row_id[i]) for i in unit]
        for side in ("chosen", "rejected"):
            responses = getattr(data.examples, side)
            ids, mask, pos, seg = (b[f"{side}_{k}"][0] for k in SEQ_KEYS)
            off = 0
            for j, i in enumerate(unit, 1):
                want = data.examples.prompt[i].tolist() + responses[i].tolist()
                n = len(want)
                # Segment j of both sides is the same pair (same row_id column j-1).
                assert ids[off : off + n].tolist() == want
                assert (seg[off : off + n] == j).all() and pos[off : off + n].tolist() == list(range(n))
                assert mask[off] == 0 and mask[off + n - 1] == 1
                off += n
            assert (seg[off:] == 0).all() and (pos[off:] == 0).all() and (mask[off:] == 0).all()
            assert off <= 48


def test_packing_respects_max_segments(pairs, tok):
    data = prepare(pairs(10), tok, _cfg(max_length=256, packing=True, max_segments_per_row=4))
    assert [len(u) for u in data.units] == [4, 4, 2]


def test_pairwise_both_orders(pairs, tok):
    rows = pairs(2, extra={"score_chosen": 3.0, "score_rejected": 1.0})
    data = prepare(rows, tok, _cfg(task="pairwise"))
    b = data.collate(data.units)
    assert set(b) >= {f"{d}_{k}" for d in ("fwd", "bwd") for k in ("input_ids", "positions", "segment_ids")}
    fwd = tok.decode(b["fwd_input_ids"][0][b["fwd_segment_ids"][0] > 0])
    bwd = tok.decode(b["bwd_input_ids"][0][b["bwd_segment_ids"][0] > 0])
    assert fwd == "<s>Hello world 0\n\nResponse A: fine 0 thank you\n\nResponse B: fox 0</s>"
    assert bwd == "<s>Hello world 0\n\nResponse A: fox 0\n\nResponse B: fine 0 thank you</s>"
    last = b["fwd_last_index"]
    assert last.shape == (2,) and (b["fwd_segment_ids"][np.arange(2), last] == 1).all()
    assert (b["fwd_segment_ids"][np.arange(2), last + 1] == 0).all()
    assert b["fwd_input_ids"][0, last[0]] == tok.eos_token_id
    assert b["label"].tolist() == [2.0, 2.0]


def test_pairwise_template_overridable(pairs, tok):
    data = prepare(pairs(2), tok, _cfg(task="pairwise", pairwise_a_prefix=" [A] ", pairwise_b_prefix=" [B] "))
    b = data.collate(data.units)
    assert "[A] fine 0 thank you [B] fox 0" in tok.decode(b["fwd_input_ids"][0])


def test_kto_kl_rows_pair_prompt_with_next_rows_completion(tok):
    rows = [{"prompt": f"Hello world {i}", "completion": f" fine {i}", "label": i % 2 == 0} for i in range(4)]
    data = prepare(rows, tok, _cfg(task="kto", batch_size=4))
    b = data.collate(data.units)
    assert b["label"][:, 0].tolist() == [1, 0, 1, 0]
    for i in range(4):
        kl = tok.decode(b["kl_input_ids"][i][b["kl_segment_ids"][i] > 0])
        assert kl == f"<s>Hello world {i} fine {(i + 1) % 4}</s>"
        scored = tok.decode(b["kl_input_ids"][i][b["kl_loss_mask"][i] == 1])
        assert scored == f" fine {(i + 1) % 4}</s>"


def test_kto_kl_partner_skips_the_same_pair(pairs, tok):
    data = prepare(pairs(2), tok, _cfg(task="kto", batch_size=4))  # examples: (0, y_w), (0, y_l), (1, y_w), (1, y_l)
    b = data.collate(data.units)
    for i in range(4):
        kl = tok.decode(b["kl_input_ids"][i][b["kl_segment_ids"][i] > 0])
        own_prompt = f"Hello world {i // 2}"
        assert kl.startswith("<s>" + own_prompt)
        assert f" {i // 2}</s>" not in kl  # the completion comes from the other pair
