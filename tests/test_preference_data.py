"""Preference data: validation, JSONL -> TFDS, encoding, batching and the synthetic task."""

import json
import math

import numpy as np
import pytest

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.data import BadRowError, build_char_tokenizer
from jaxrl_llm.data import preference as pref

BUCKETS = (16, 32)


@pytest.fixture(scope="module")
def tok():
  return build_char_tokenizer()


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _enc(rows, tok, kind, **kw):
  args = dict(kind=kind, split="train", max_len=32, on_bad_row="raise", on_overlong="reject")
  args.update(kw)
  return pref.encode_preference_split(rows, tok, **args)


GOOD = {
    "pairs": {"prompt": "p", "chosen": "ab", "rejected": "c", "margin": 0.5},
    "rankings": {"prompt": "p", "responses": ["a", "bb", "c"], "ranking": [1, 2, 0]},
    "ratings": {"prompt": "p", "response": "ab", "score": 0.25},
}

BAD = [  # (kind, row, field named in the error)
    ("pairs", {"prompt": "p", "rejected": "c"}, "chosen"),
    ("pairs", {"prompt": 3, "chosen": "a", "rejected": "c"}, "prompt"),
    ("pairs", {"prompt": "p", "chosen": "", "rejected": "c"}, "chosen"),
    ("pairs", {"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected"),
    ("pairs", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": float("nan")}, "margin"),
    ("pairs", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1.0}, "margin"),
    ("pairs", {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin"),
    ("rankings", {"prompt": "p", "responses": ["a"], "ranking": [0]}, "responses"),
    ("rankings", {"prompt": "p", "responses": "ab", "ranking": [0, 1]}, "responses"),
    ("rankings", {"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "responses"),
    ("rankings", {"prompt": "p", "responses": ["a", "a"], "ranking": [0, 1]}, "responses"),
    ("rankings", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "ranking"),
    ("rankings", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1, 2]}, "ranking"),
    ("rankings", {"prompt": "p", "responses": ["a", "b"], "ranking": [0, True]}, "ranking"),
    ("rankings", {"prompt": "p", "responses": ["a", "b"]}, "ranking"),
    ("ratings", {"prompt": "p", "response": "a", "score": float("inf")}, "score"),
    ("ratings", {"prompt": "p", "response": "a", "score": 1e300}, "score"),
    ("ratings", {"prompt": "p", "response": "a", "score": True}, "score"),
    ("ratings", {"prompt": "p", "response": "a"}, "score"),
    ("ratings", {"prompt": "p", "response": ["a"], "score": 1.0}, "response"),
]


@pytest.mark.parametrize("kind,row,field", BAD)
def test_bad_rows_name_split_row_and_field(tok, kind, row, field):
  with pytest.raises(BadRowError, match=rf"train row 1 field '{field}'"):
    _enc([GOOD[kind], row], tok, kind)
  enc = _enc([GOOD[kind], row, GOOD[kind]], tok, kind, on_bad_row="skip")
  assert len(enc) == 2 and enc.stats.bad_rows == 1 and enc.stats.rows == 3
  assert enc.stats.as_metrics("train")["data/train/bad_rows"] == 1


def test_not_a_mapping_and_unknown_kind(tok):
  with pytest.raises(BadRowError, match="train row 0: expected a mapping"):
    _enc(["x"], tok, "pairs")
  with pytest.raises(ValueError, match="unknown preference kind"):
    _enc([GOOD["pairs"]], tok, "triples")
  with pytest.raises(BadRowError, match="no usable rows"):
    _enc([{"prompt": "p"}], tok, "ratings", on_bad_row="skip")


@pytest.mark.parametrize("kind", pref.KINDS)
def test_jsonl_tfds_round_trip(tmp_path, tok, kind):
  jdir = tmp_path / "jsonl"
  gen = {"pairs": lambda n, s: pref.generate_pairs(n, seed=s, with_margin=True),
         "rankings": lambda n, s: pref.generate_rankings(n, seed=s, k=3),
         "ratings": lambda n, s: pref.generate_ratings(n, seed=s)}[kind]
  train, test = gen(12, 0), gen(4, 1)
  _write(jdir / "train.jsonl", train)
  _write(jdir / "test.jsonl", test)
  sources = pref.prepare_preference(jdir, kind, tmp_path / "tfds")
  assert sorted(sources) == ["test", "train"]
  got = pref.load_split_rows(sources["train"])
  assert len(got) == 12
  for want, row in zip(train, got):  # JSONL order is kept.
    canon = pref.validate_preference_row(row, 0, "train", kind)
    want = pref.validate_preference_row(want, 0, "train", kind)
    for key, value in want.items():
      if isinstance(value, float):
        assert canon[key] == pytest.approx(value, rel=1e-6)
      else:
        assert canon[key] == value
  # The TFDS rows (bytes, numpy) encode the same as the JSONL dicts.
  a, b = _enc(got, tok, kind), _enc(train, tok, kind)
  assert all(np.array_equal(x, y) for x, y in zip(a.prompts, b.prompts))
  assert [[r.tolist() for r in rs] for rs in a.responses] == \
      [[r.tolist() for r in rs] for rs in b.responses]
  assert np.allclose(a.margins, b.margins) and np.allclose(a.scores, b.scores)


def test_editing_jsonl_rebuilds(tmp_path):
  jdir = tmp_path / "jsonl"
  _write(jdir / "train.jsonl", [GOOD["ratings"]])
  name1 = pref.make_preference_config(jdir, "ratings").name
  assert name1.startswith("ratings_")
  s1 = pref.prepare_preference(jdir, "ratings", tmp_path / "tfds")
  assert len(s1["train"]) == 1
  _write(jdir / "train.jsonl", [GOOD["ratings"], dict(GOOD["ratings"], score=0.75)])
  name2 = pref.make_preference_config(jdir, "ratings").name
  assert name2 != name1
  s2 = pref.prepare_preference(jdir, "ratings", tmp_path / "tfds")
  assert len(s2["train"]) == 2
  _write(jdir / "validation.jsonl", [GOOD["ratings"]])  # A new split also changes the name.
  assert pref.make_preference_config(jdir, "ratings").name not in (name1, name2)
  assert pref.make_preference_config(jdir, "pairs").name.startswith("pairs_")


def test_jsonl_errors_name_file_and_line(tmp_path):
  jdir = tmp_path / "jsonl"
  with pytest.raises(FileNotFoundError, match="train.jsonl"):
    pref.prepare_preference(jdir, "pairs", tmp_path / "tfds")
  _write(jdir / "train.jsonl", [GOOD["pairs"], "", "{not json", GOOD["pairs"]])
  with pytest.raises(BadRowError, match=r"train\.jsonl line 3: train row 1: not valid JSON"):
    pref.prepare_preference(jdir, "pairs", tmp_path / "tfds")
  _write(jdir / "train.jsonl", [GOOD["pairs"], dict(GOOD["pairs"], rejected="ab")])
  with pytest.raises(BadRowError, match=r"line 2: train row 1 field 'rejected'"):
    pref.prepare_preference(jdir, "pairs", tmp_path / "tfds")
  _write(jdir / "train.jsonl", [GOOD["pairs"], "[1, 2]", "{bad", GOOD["pairs"]])
  sources, stats = pref.prepare_preference_with_stats(jdir, "pairs", tmp_path / "tfds",
                                                      on_bad_row="skip")
  assert len(sources["train"]) == 2
  assert (stats["train"].rows, stats["train"].bad_rows) == (4, 2)
  _write(jdir / "train.jsonl", ["{bad"])
  with pytest.raises(BadRowError, match="no usable rows"):
    pref.prepare_preference(jdir, "pairs", tmp_path / "tfds", on_bad_row="skip")


def _check_sequences(batch, enc, idx, tok, k_axis=True):
  """Tokens/masks/last_index of every real response match the encoded split."""
  for row, i in enumerate(idx):
    for j, resp in enumerate(enc.responses[i]):
      sel = (row, j) if k_axis else (row,)
      p = enc.prompts[i]
      seq = np.concatenate([p, resp])
      n = len(seq)
      assert batch["tokens"][sel][:n].tolist() == seq.tolist()
      assert (batch["tokens"][sel][n:] == tok.pad_token_id).all()
      assert batch["attention_mask"][sel].tolist() == [t < n for t in range(
          batch["tokens"].shape[-1])]
      rm = batch["response_mask"][sel]
      assert rm.sum() == len(resp) and rm[len(p): n].all()
      assert batch["tokens"][sel][rm].tolist() == resp.tolist()  # Response + EOS exactly.
      assert batch["last_index"][sel] == n - 1
      assert batch["tokens"][sel][n - 1] == tok.eos_token_id
      assert seq[0] == tok.bos_token_id


def test_pair_batches(tok):
  rows = pref.generate_pairs(10, seed=3, with_margin=True)
  rows[4].pop("margin")
  enc = _enc(rows, tok, "pairs")
  batcher = pref.PreferenceBatcher(enc, batch_size=4, buckets=BUCKETS, pad_id=tok.pad_token_id,
                                   data_key=rng_lib.purpose_key(0, "data"))
  batch, nxt = batcher.batch(0)
  assert nxt == 4
  assert set(batch) == {"tokens", "attention_mask", "response_mask", "last_index", "ranking",
                        "valid", "margin", "probability"}
  assert batch["probability"].dtype == np.float32 and (batch["probability"] == 1.0).all()
  assert batch["tokens"].shape == (4, 2, 16) and batch["tokens"].dtype == np.int32
  for key in ("attention_mask", "response_mask"):
    assert batch[key].shape == (4, 2, 16) and batch[key].dtype == bool
  assert batch["last_index"].shape == (4, 2) and batch["last_index"].dtype == np.int32
  assert batch["ranking"].dtype == np.int32 and (batch["ranking"] == [0, 1]).all()
  assert batch["valid"].shape == (4, 2) and batch["valid"].all()
  assert batch["margin"].shape == (4,) and batch["margin"].dtype == np.float32
  idx = batcher.indices(0)
  want = [0.0 if i == 4 else pref.hidden_score(rows[i]["chosen"]) -
          pref.hidden_score(rows[i]["rejected"]) for i in idx]
  assert np.allclose(batch["margin"], want)
  _check_sequences(batch, enc, idx, tok)
  # Chosen (slot 0) is the row's chosen text.
  for row, i in enumerate(idx):
    text = tok.decode(batch["tokens"][row, 0][batch["response_mask"][row, 0]][:-1])
    assert text == rows[i]["chosen"]


def test_ranking_batches_pad_k(tok):
  rows = [{"prompt": "q1", "responses": ["a", "bb", "ccc"], "ranking": [2, 0, 1]},
          {"prompt": "q2", "responses": ["x", "y"], "ranking": [1, 0]}]
  enc = _enc(rows, tok, "rankings")
  assert enc.max_responses == 3
  batches = list(pref.eval_batches(enc, 3, buckets=BUCKETS, pad_id=0))
  assert len(batches) == 1
  b = batches[0]
  assert b["tokens"].shape == (3, 3, 16) and "margin" not in b
  assert b["row_valid"].tolist() == [True, True, False]
  assert b["ranking"][:2].tolist() == [[2, 0, 1], [1, 0, 2]]
  # valid is over ranked positions; the filler row has none.
  assert b["valid"].tolist() == [[True, True, True], [True, True, False], [False] * 3]
  assert not b["response_mask"][1, 2].any() and b["attention_mask"][1, 2].any()
  assert b["tokens"][1, 2].tolist() == b["tokens"][1, 0].tolist()  # Padded slot copies slot 0.
  _check_sequences(b, enc, [0, 1], tok)
  with pytest.raises(ValueError, match="num_responses"):
    pref.PreferenceBatcher(enc, batch_size=2, buckets=BUCKETS, pad_id=0,
                           data_key=rng_lib.purpose_key(0, "data"), num_responses=2)
  wide = pref.PreferenceBatcher(enc, batch_size=2, buckets=BUCKETS, pad_id=0, shuffle=False,
                                data_key=rng_lib.purpose_key(0, "data"), num_responses=5)
  b5, _ = wide.batch(0)
  assert b5["ranking"][1].tolist() == [1, 0, 2, 3, 4]
  assert b5["valid"].tolist() == [[True] * 3 + [False] * 2, [True] * 2 + [False] * 3]


def test_rating_batches_and_eval(tok):
  rows = pref.generate_ratings(7, seed=2)
  enc = _enc(rows, tok, "ratings")
  batcher = pref.PreferenceBatcher(enc, batch_size=3, buckets=BUCKETS, pad_id=0, shuffle=False,
                                   data_key=rng_lib.purpose_key(0, "data"))
  b, _ = batcher.batch(0)
  assert set(b) == {"tokens", "attention_mask", "response_mask", "last_index", "score", "valid"}
  assert b["valid"].shape == (3,) and b["valid"].all()
  assert b["tokens"].shape == (3, 16) and b["last_index"].shape == (3,)
  assert b["score"].dtype == np.float32
  assert np.allclose(b["score"], [rows[i]["score"] for i in range(3)])
  _check_sequences(b, enc, [0, 1, 2], tok, k_axis=False)
  evals = list(pref.eval_batches(enc, 3, buckets=BUCKETS, pad_id=0))
  assert [e["row_valid"].sum() for e in evals] == [3, 3, 1]
  assert all((e["valid"] == e["row_valid"]).all() for e in evals)
  assert np.allclose(np.concatenate([e["score"][e["row_valid"]] for e in evals]),
                     [r["score"] for r in rows])


def test_shuffle_is_deterministic_and_resumable(tok):
  enc = _enc(pref.generate_pairs(10, seed=5), tok, "pairs")
  key = rng_lib.purpose_key(3, "data")

  def make(k=key):
    return pref.PreferenceBatcher(enc, batch_size=4, buckets=BUCKETS, pad_id=0, data_key=k)

  a, b = make(), make()
  pos, seen = 0, []
  for _ in range(5):  # Crosses two epoch boundaries.
    batch, pos = a.batch(pos)
    seen.append(batch)
  for p in (8, 16, 0):  # A fresh instance resumed at any position gives the same batch.
    got, _ = b.batch(p)
    want = seen[p // 4]
    assert all(np.array_equal(got[k], want[k]) for k in want)
  epoch0 = np.concatenate([a.indices(0), a.indices(4), a.indices(8)[:2]])
  assert sorted(epoch0.tolist()) == list(range(10))  # Each epoch visits every row once.
  assert a.permutation(0).tolist() != a.permutation(1).tolist()
  assert make(rng_lib.purpose_key(4, "data")).permutation(0).tolist() != \
      a.permutation(0).tolist()


def test_overlong_reject_and_truncate(tok):
  rows = [{"prompt": "abcdefghij", "chosen": "12345", "rejected": "9"},  # 1+10+6 = 17 > 12
          {"prompt": "p", "chosen": "1", "rejected": "22"},
          {"prompt": "p", "chosen": "x" * 12, "rejected": "y"}]  # The response alone is too long.
  enc = _enc(rows, tok, "pairs", max_len=12)
  assert len(enc) == 1 and enc.stats.rejected == 2 and enc.stats.truncated == 0
  enc = _enc(rows, tok, "pairs", max_len=12, on_overlong="truncate")
  assert len(enc) == 2 and enc.stats.rejected == 1 and enc.stats.truncated == 1
  p = enc.prompts[0]
  assert p[0] == tok.bos_token_id and tok.decode(p[1:]) == "fghij"  # Oldest tokens dropped.
  assert len(p) + len(enc.responses[0][0]) == 12  # The longest response fits exactly...
  assert tok.decode(enc.responses[0][1][:-1]) == "9"  # ...and both share the truncated prompt.


def test_hidden_score_and_property():
  assert pref.hidden_score("1234") == 1.0 and pref.hidden_score("1123") == 1.0
  assert pref.hidden_score("4321") == 0.0
  assert pref.hidden_score("1324") == pytest.approx(2 / 3)
  for bad in ("", "1", "12a4", " 123", "123\n", "١٢٣", None, 123, ["1", "2"]):
    assert pref.hidden_score(bad) == 0.0
    assert not pref.has_hidden_property(bad)
  assert pref.has_hidden_property("0199")
  assert pref.has_hidden_property("0199", "n=4:")
  assert not pref.has_hidden_property("019", "n=4:")
  assert not pref.has_hidden_property("0199", "bogus")
  assert pref.hidden_score("1324", "n=3:") == 0.0
  assert pref.prompt_digits("n=5:") == 5 and pref.prompt_digits("n=:") is None


def test_synthetic_generators():
  for gen in (pref.generate_pairs, pref.generate_rankings, pref.generate_ratings,
              pref.generate_sft_demos):
    assert gen(50, seed=1) == gen(50, seed=1)
    assert gen(50, seed=1) != gen(50, seed=2)
  pairs = pref.generate_pairs(400, seed=0)
  one_sorted = 0
  for r in pairs:
    n = pref.prompt_digits(r["prompt"])
    assert len(r["chosen"]) == len(r["rejected"]) == n
    assert pref.hidden_score(r["chosen"]) > pref.hidden_score(r["rejected"])
    one_sorted += pref.has_hidden_property(r["chosen"], r["prompt"])
    assert not pref.has_hidden_property(r["rejected"])
  assert 0.45 < one_sorted / len(pairs) < 0.75  # Many one-sorted pairs, and graded ones too.
  for r in pref.generate_rankings(200, seed=0, k=4):
    scores = [pref.hidden_score(r["responses"][j], r["prompt"]) for j in r["ranking"]]
    assert all(a > b for a, b in zip(scores, scores[1:]))
  for r in pref.generate_ratings(200, seed=0):
    assert r["score"] == pref.hidden_score(r["response"], r["prompt"])
  demos = pref.generate_sft_demos(500, seed=0, sorted_fraction=0.2)
  rate = np.mean([pref.has_hidden_property(r["answer"], r["prompt"]) for r in demos])
  assert rate == pytest.approx(0.2, abs=0.01)
  assert {pref.prompt_digits(r["prompt"]) for r in demos} == {3, 4, 5, 6}


def test_write_synthetic_jsonl_feeds_the_pipeline(tmp_path, tok):
  dirs = pref.write_synthetic_preference_jsonl(tmp_path / "syn", seed=0, train_size=20,
                                               validation_size=5, test_size=0)
  assert sorted(dirs) == ["pairs", "rankings", "ratings", "sft"]
  assert not (tmp_path / "syn" / "pairs" / "test.jsonl").exists()
  again = tmp_path / "again"
  pref.write_synthetic_preference_jsonl(again, seed=0, train_size=20, validation_size=5)
  for kind in dirs:
    for split in ("train", "validation"):
      assert (tmp_path / "syn" / kind / f"{split}.jsonl").read_text() == \
          (again / kind / f"{split}.jsonl").read_text()
  train = (tmp_path / "syn" / "pairs" / "train.jsonl").read_text().splitlines()
  val = (tmp_path / "syn" / "pairs" / "validation.jsonl").read_text().splitlines()
  assert train[:5] != val  # Splits are drawn independently.
  rows, stats = pref.read_preference_jsonl(tmp_path / "syn" / "rankings" / "train.jsonl",
                                           "rankings", split="train")
  assert len(rows) == 20 and stats.bad_rows == 0
  enc = _enc(rows, tok, "rankings")
  assert enc.max_responses == 4 and not math.isnan(float(enc.scores.sum()))


class _NoBos:
  """The char tokenizer without a BOS token (Qwen-style)."""

  def __init__(self, tok):
    self._tok, self.bos_token_id, self.eos_token_id = tok, None, tok.eos_token_id

  def __call__(self, *args, **kwargs):
    return self._tok(*args, **kwargs)


def test_no_bos_tokenizer(tok):
  enc = _enc([GOOD["ratings"]], _NoBos(tok), "ratings")
  assert tok.decode(enc.prompts[0]) == "p" and enc.responses[0][0][-1] == tok.eos_token_id
