import numpy as np
import pytest

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.config import DataConfig
from jaxrl_llm.data import (BadRowError, SFTBatcher, build_char_tokenizer, encode_split, load_rows,
                            load_tokenizer, pick_bucket, prompt_batches, save_tokenizer)
from jaxrl_llm.data.arithmetic import generate_problems, make_builder_config


@pytest.fixture(scope="module")
def tok():
  return build_char_tokenizer()


def test_arithmetic_splits_are_exact_and_disjoint():
  cfg = make_builder_config(2, "+-*", 300, 50, 50, dataset_seed=3)
  splits = generate_problems(cfg)
  assert [len(splits[s]) for s in ("train", "validation", "test")] == [300, 50, 50]
  seen = [set(r["prompt"] for r in splits[s]) for s in ("train", "validation", "test")]
  assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
  for row in splits["train"]:
    a, op, b = row["prompt"][:-1].partition("+") if "+" in row["prompt"] else (
        row["prompt"][:-1].partition("*") if "*" in row["prompt"] else
        row["prompt"][:-1].partition("-"))
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert row["answer"] == str(expected)
  assert generate_problems(cfg) == splits  # Pure function of the builder config.
  other = generate_problems(make_builder_config(2, "+-*", 300, 50, 50, dataset_seed=4))
  assert other != splits


def test_tfds_builder_round_trip(data_dir):
  cfg = DataConfig(digits=1, operators="+", train_size=60, validation_size=20, test_size=20,
                   length_buckets=(8,), data_dir=data_dir)
  rows = load_rows(cfg, "train")
  assert len(rows) == 60
  expected = {r["prompt"]: r["answer"] for r in generate_problems(make_builder_config(
      1, "+", 60, 20, 20, 0))["train"]}
  got = {r["prompt"].decode(): r["answer"].decode() for r in rows}
  assert got == expected
  assert len(load_rows(cfg, "test")) == 20


def test_tokenizer_saves_and_loads_as_hf_fast_tokenizer(tmp_path, tok):
  save_tokenizer(tok, tmp_path)
  loaded = load_tokenizer(tmp_path)
  text = "12+34=46"
  ids = loaded(text, add_special_tokens=False)["input_ids"]
  assert len(ids) == len(text) and loaded.decode(ids) == text
  assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
  assert ids == tok(text, add_special_tokens=False)["input_ids"]


def _encode(rows, tok, **kw):
  args = dict(split="train", max_len=12, on_bad_row="raise", on_overlong="reject")
  args.update(kw)
  return encode_split(rows, tok, **args)


@pytest.mark.parametrize("row,msg", [
    ({"prompt": "1+1="}, "train row 1 field 'answer': missing"),
    ({"prompt": 5, "answer": "2"}, "train row 1 field 'prompt': expected str or bytes, got int"),
    ({"prompt": b"\xff\xfe", "answer": "2"}, "train row 1 field 'prompt': undecodable bytes"),
    ({"prompt": "1+1=", "answer": ""}, "train row 1 field 'answer': empty"),
    (["1+1=", "2"], "train row 1: expected a mapping"),
])
def test_bad_rows_raise_with_index_and_field(tok, row, msg):
  rows = [{"prompt": "1+2=", "answer": "3"}, row]
  with pytest.raises(BadRowError, match=msg.replace("+", r"\+")):
    _encode(rows, tok)
  out = _encode(rows, tok, on_bad_row="skip")
  assert len(out) == 1 and out.stats.bad_rows == 1 and out.stats.rows == 2


def test_overlong_rows_are_rejected_or_truncated_and_counted(tok):
  rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "123456789+1=", "answer": "123456790"}]
  # Second row: BOS + 12 prompt + 9 answer + EOS = 23 > 16 tokens.
  out = _encode(rows, tok, max_len=16)
  assert len(out) == 1 and out.stats.rejected == 1
  out = _encode(rows, tok, max_len=16, on_overlong="truncate")
  assert len(out) == 2 and out.stats.truncated == 1
  assert len(out.prompts[1]) + len(out.answers[1]) == 16
  assert out.prompts[1][0] == tok.bos_token_id
  assert tok.decode(out.answers[1][:-1].tolist()) == "123456790"  # The answer is kept whole.
  assert tok.decode(out.prompts[1][1:].tolist()) == "123456789+1="[-5:]
  with pytest.raises(BadRowError, match="no usable rows"):
    _encode(rows[1:], tok, max_len=16)


def test_jsonl_source_reports_unparsable_lines(tmp_path, tok):
  (tmp_path / "train.jsonl").write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{not json\n')
  cfg = DataConfig(source="jsonl", jsonl_dir=str(tmp_path), length_buckets=(8,))
  rows = load_rows(cfg, "train")
  with pytest.raises(BadRowError, match=r"train row 1 \(line 2\): not valid JSON"):
    _encode(rows, tok)
  assert _encode(rows, tok, on_bad_row="skip").stats.bad_rows == 1


def test_batcher_is_deterministic_resumable_and_bucketed(tok):
  rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(3)]
  split = _encode(rows, tok)
  make = lambda seed: SFTBatcher(split, batch_size=8, grad_accum_steps=2, buckets=(6, 8, 12),
                                 pad_id=tok.pad_token_id,
                                 data_key=rng_lib.purpose_key(seed, "data"))
  a, b = make(0), make(0)
  pos_a = pos_b = 0
  batches = []
  for _ in range(9):  # Crosses two epoch boundaries (30 rows, 8 per batch).
    x, pos_a = a.batch(pos_a)
    y, pos_b = b.batch(pos_b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
    batches.append(x)
  # Resuming from a saved position reproduces the same batch with a fresh batcher.
  x, _ = make(0).batch(8 * 5)
  np.testing.assert_array_equal(x["tokens"], batches[5]["tokens"])
  assert batches[0]["tokens"].shape == (2, 4, 8)  # Longest sequence 7 tokens -> bucket 8.
  assert not np.array_equal(make(1).batch(0)[0]["tokens"], batches[0]["tokens"])
  # Every epoch visits every row exactly once.
  perm = a.permutation(1)
  assert sorted(perm.tolist()) == list(range(30))
  # Loss mask covers answer + EOS only.
  t, lm = batches[0]["tokens"][0, 0], batches[0]["loss_mask"][0, 0]
  assert tok.decode(t[lm].tolist(), skip_special_tokens=True).isdigit()
  assert t[lm][-1] == tok.eos_token_id


def test_prompt_batches_left_pad_and_mark_filler(tok):
  rows = [{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(5)]
  split = _encode(rows, tok, answer_budget=3)
  batches = list(prompt_batches(split, batch_size=4, buckets=(8,), pad_id=0))
  assert len(batches) == 2
  assert batches[1]["valid"].tolist() == [True, False, False, False]
  assert batches[0]["attention_mask"][0].tolist() == [False] * 3 + [True] * 5
  assert batches[1]["answers"] == ["5"]
  assert pick_bucket(8, (8, 12)) == 8 and pick_bucket(9, (8, 12)) == 12
