"""Learning from demonstrations: the reasoning task with teacher traces, user demonstrations,
the verifier, and the SFT view of demonstration rows."""

import json

import numpy as np
import pytest

from jaxrl_llm.config import ConfigError, DataConfig
from jaxrl_llm.data import BadRowError, build_char_tokenizer, encode_split, load_rows
from jaxrl_llm.data import reasoning
from jaxrl_llm.data.pipeline import sft_rows
from jaxrl_llm.rewards import get_reward_function


def test_teacher_traces_are_correct_steps_and_pass_the_verifier():
  steps, value = reasoning.solve([17, 25, 9], ["+", "-"])
  assert steps == ["17+25=42", "42-9=33"] and value == 33
  # Products first, then sums left to right.
  assert reasoning.demonstration([2, 3, 4, 5], ["+", "*", "-"]) == "3*4=12;2+12=14;14-5=9;Answer: 9"
  assert reasoning.prompt_text([2, 3, 4], ["-", "*"]) == "2-3*4="
  assert reasoning.final_answer("a;b;Answer: -7 ") == -7
  assert reasoning.final_answer("Answer: 3;Answer: 4") == 4
  for bad in ("", "Answer:", "Answer: x", None, 5, "no answer 4"):
    assert reasoning.final_answer(bad) is None
  assert reasoning.trace_steps("3*4=12; 2+12=14;Answer: 14") == ("3*4=12", "2+12=14")
  sizes = {"train": 300, "validation": 50, "test": 50}
  rows = reasoning.generate({"easy": sizes, "hard": sizes}, seed=3, operators="+-*")
  assert set(rows) == {"train", "validation", "test", "train_hard", "validation_hard",
                       "test_hard"}
  prompts = [r["prompt"] for split in rows.values() for r in split]
  assert len(prompts) == len(set(prompts)) == 800  # no problem in two splits
  verify = get_reward_function("final_answer")
  for name, split in rows.items():
    demos = [r["demonstration"] for r in split]
    assert verify([r["prompt"] for r in split], demos,
                  answer=[r["answer"] for r in split]).min() == 1.0, name
    # The teacher's value is the expression's value (Python's precedence agrees).
    for r in split[:20]:
      assert int(r["answer"]) == eval(r["prompt"][:-1])  # noqa: S307 -- our own digits and ops.
  assert {r["prompt"].count("+") + r["prompt"].count("-") + r["prompt"].count("*")
          for r in rows["test_hard"]} == {4}
  assert rows == reasoning.generate({"easy": sizes, "hard": sizes}, seed=3, operators="+-*")


def test_refts_partial_reward_and_the_verifier_reward():
  partial = get_reward_function("final_answer_partial")
  out = partial(["p"] * 4, ["x=1;Answer: 5", "Answer: 4", "no answer", ""], answer=["5"] * 4)
  np.testing.assert_array_equal(out, np.asarray([1.0, 0.1, 0.0, 0.0], np.float32))
  exact = get_reward_function("final_answer")
  np.testing.assert_array_equal(exact(["p"] * 2, ["Answer: 5", "Answer: 6"],
                                      answer=["x;Answer: 5", "5"]), [1.0, 0.0])


def test_chain_task_levels_through_the_pipeline(data_dir):
  base = DataConfig(task="chain", train_size=40, validation_size=8, test_size=8,
                    data_dir=data_dir)
  easy = load_rows(base, "test")
  hard = load_rows(DataConfig(**{**base.__dict__, "chain_level": "hard"}), "test")
  assert len(easy) == len(hard) == 8
  assert all(r["level"] == b"easy" or r["level"] == "easy" for r in easy)
  split = encode_split(hard, build_char_tokenizer(), split="test", max_len=96,
                       on_bad_row="raise", on_overlong="reject")
  assert split.demonstrations is not None and len(split.demonstrations) == 8
  assert "demonstration" not in split.columns and split.columns["level"][0] == "hard"
  assert reasoning.final_answer(split.demonstrations[0][0]) == int(split.answer_texts[0])
  # SFT trains on the traces; the gold answer stays a column.
  sft = encode_split(sft_rows(hard, base, "test"), build_char_tokenizer(), split="test",
                     max_len=96, on_bad_row="raise", on_overlong="reject")
  assert sft.answer_texts[0] == split.demonstrations[0][0]
  assert sft.columns["gold_answer"][0] == split.answer_texts[0]
  with pytest.raises(ConfigError, match="chain_hard_operands"):
    DataConfig(task="chain", chain_easy_operands=4, chain_hard_operands=3)


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_user_demonstrations_from_jsonl(tmp_path):
  _write(tmp_path / "train.jsonl", [
      {"prompt": "1+2=", "answer": "3", "demonstration": "1+2=3;Answer: 3"},
      {"prompt": "2+2=", "answer": "4",
       "demonstration": ["2+2=4;Answer: 4", "2*2=4;Answer: 4"]}] * 10)
  dc = DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path), validation_size=2,
                  test_size=2)
  rows = load_rows(dc, "train")
  split = encode_split(rows, build_char_tokenizer(), split="train", max_len=64,
                       on_bad_row="raise", on_overlong="reject")
  assert [len(d) for d in split.demonstrations[:2]] in ([1, 2], [2, 1], [1, 1], [2, 2])
  assert len(sft_rows(rows, dc, "train")) == sum(len(d) for d in split.demonstrations)
  for bad, match in (({"prompt": "p", "answer": "1", "demonstration": ""}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1", "demonstration": [3]}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1", "demonstration": []}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1"}, "row 1 field 'demonstration': missing")):
    with pytest.raises(BadRowError, match=match):
      encode_split([rows[0], bad], build_char_tokenizer(), split="train", max_len=64,
                   on_bad_row="raise", on_overlong="reject")
  with pytest.raises(BadRowError, match="row 0 field 'demonstration': missing"):
    sft_rows([{"prompt": "p", "answer": "1"}], DataConfig(sft_target="demonstration"), "train")
