"""RULER's tasks: prompts by hand-checkable rules, RULER's scorers on hand cases, one prefill per
haystack against separate forwards, and the whole run on a tiny model and on SmolLM2."""

import json

import jax
import numpy as np
import pytest

from rope_lab import pe
from rope_lab.data import assets
from rope_lab.data.synthetic import lines_example, passkey_example
from rope_lab.data.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, train_sentencepiece
from rope_lab.errors import ConfigError, MissingFileError
from rope_lab.evaluate import ruler
from rope_lab.evaluate import ruler_tasks as rt
from rope_lab.model import generate as gen
from rope_lab.model.skeleton import ModelConfig, Transformer, init_params
from rope_lab.zero_shot import measure

BYTES = ByteTokenizer()
CFG = ModelConfig(vocab_size=258, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, attention="dot_product")


@pytest.fixture(scope="module")
def tiny():
  """A random byte-level model, its weights scaled up so that attention is sharp and positions matter."""
  encoding = pe.make("rope")
  params = init_params(CFG, encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model,
                                           seq_len=1), jax.random.key(0))
  return gen.Model(CFG, jax.tree_util.tree_map(lambda x: x * 4 if x.ndim >= 2 else x, params), encoding)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  return HFTokenizer("gguf:" + assets.smollm2_gguf())


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
  text = rt.paul_graham_essay().words[:3000]
  path = train_sentencepiece([" ".join(text[i:i + 200]) for i in range(0, len(text), 200)], model_type="bpe",
                             vocab_size=400, output_path=str(tmp_path_factory.mktemp("spm") / "ruler.model"))
  return SentencePieceTokenizer(path)


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("task, depths", [("niah_single_1", (0.3,)), ("niah_single_2", (0.7,)),
                                          ("niah_multikey_1", (0.1, 0.4, 0.6, 0.9)), ("niah_multikey_2", (0.5,))])
def test_each_needle_appears_once_at_its_requested_depth_and_the_answer_is_in_the_context(task, depths):
  sample = rt.make_sample(task, BYTES, 4096, seed=3, options=rt.Options(depths=depths))
  assert len(sample.needles) == len(depths)
  for needle in sample.needles:
    assert sample.context.count(needle.text) == 1 and sample.context.find(needle.text) == needle.start
  # Each needle sits at the line or sentence boundary nearest where it was asked (within ~2% of 4K bytes).
  # The needles are shuffled as RULER shuffles them, so compare the sets of depths.
  assert np.abs(np.sort([n.depth for n in sample.needles]) - np.sort(depths)).max() < 0.04
  (query,) = sample.queries
  assert query.text.endswith(" mentioned in the provided text is")  # RULER's answer prefix, singular form
  for answer in query.answers:
    assert sum(answer in n.text for n in sample.needles) == 1
  assert sample.context_ids.tolist() == list(sample.context.encode())


def test_several_queries_share_one_haystack_and_multiquery_splits_into_one_question_per_key():
  sample = rt.make_sample("niah_multikey_1", BYTES, 4096, options=rt.Options(queries=4))
  assert len(sample.queries) == 4 and len({q.answers for q in sample.queries}) == 4
  needle_values = {n.text.rsplit(": ", 1)[1].rstrip(".") for n in sample.needles}
  assert {q.answers[0] for q in sample.queries} == needle_values  # each of the 4 needles asked once
  joint = rt.make_sample("niah_multiquery", BYTES, 4096)
  split = rt.make_sample("niah_multiquery", BYTES, 4096, options=rt.Options(split_queries=True))
  (asked,) = joint.queries
  assert asked.text.count(", and ") == 2 and len(asked.answers) == 4 and asked.text.endswith(" text are")
  assert sorted(a for q in split.queries for a in q.answers) == sorted(asked.answers)
  assert all(len(q.answers) == 1 for q in split.queries)


def test_vt_cwe_fwe_answers_are_what_their_rules_say():
  vt = rt.make_sample("vt", BYTES, 4096)
  (query,) = vt.queries
  value = query.text.split("assigned the value ")[1].split(" ")[0]
  chain = list(query.answers)
  assert f"VAR {chain[0]} = {value}" in vt.context
  for before, after in zip(chain, chain[1:]):
    assert f"VAR {after} = VAR {before} " in vt.context
  assert query.text.endswith("they are: ")
  cwe = rt.make_sample("cwe", BYTES, 8192)
  listed = cwe.context.rsplit(rt.CWE_HEADER, 1)[1].split()[1::2]
  counts = {w: listed.count(w) for w in set(listed)}
  top = sorted(counts, key=counts.get, reverse=True)[:10]
  assert set(top) == set(cwe.queries[0].answers) and min(counts[w] for w in top) == 30  # RULER's repeats at >= 4K
  fwe = rt.make_sample("fwe", BYTES, 4096)
  words = fwe.context[len(rt.FWE_HEADER):].split()
  ranked = sorted(set(words) - {"..."}, key=words.count, reverse=True)
  assert tuple(ranked[:3]) == fwe.queries[0].answers and words.count(ranked[2]) > words.count(ranked[3])


@pytest.mark.parametrize("tokenizer_name, length", [("bytes", 8192), ("sentencepiece", 8192), ("smollm2", 4096)])
def test_lengths_are_within_one_percent_of_the_target_in_the_models_own_tokens(
    tokenizer_name, length, spm_tokenizer, smollm2_tokenizer):
  tokenizer = {"bytes": BYTES, "sentencepiece": spm_tokenizer, "smollm2": smollm2_tokenizer}[tokenizer_name]
  for task in rt.SYNTHETIC_TASKS:
    sample = rt.make_sample(task, tokenizer, length, seed=1)
    assert 0.99 * length <= sample.tokens <= length, (task, sample.tokens)
    (query,) = sample.queries
    assert sample.tokens == (len(tokenizer.encode(sample.context)) + len(tokenizer.encode(query.text))
                             + max(rt.TASKS[task].tokens_to_generate, len(query.target_ids)))


def test_samples_are_a_function_of_the_seed_and_index():
  first = rt.make_samples("niah_single_3", BYTES, 2048, 2, seed=5)
  again = rt.make_samples("niah_single_3", BYTES, 2048, 2, seed=5)
  other = rt.make_sample("niah_single_3", BYTES, 2048, seed=6)
  assert [s.context for s in first] == [s.context for s in again]
  assert [s.queries[0].answers for s in first] == [s.queries[0].answers for s in again]
  assert first[0].context != first[1].context and first[0].context != other.context
  assert first[1].haystack_id == "niah_single_3/2048/5/1"


def test_qa_needs_a_local_file_and_reads_squad(tmp_path):
  with pytest.raises(MissingFileError, match=r"qa_1 needs a local copy of SQuAD.*dev-v2.0.json.*qa_file"):
    rt.make_sample("qa_1", BYTES, 2048)
  with pytest.raises(MissingFileError, match="hotpot_dev_distractor_v1.json"):
    rt.make_sample("qa_2", BYTES, 2048, options=rt.Options(qa_file=str(tmp_path / "missing.json")))
  article = lambda a: {"paragraphs": [{"context": f"Paragraph {a}.{p}: the river {a}{p} flows north.", "qas": [
      {"question": f"Where does river {a}{p} flow?", "answers": [{"text": f"north{a}{p}"}], "is_impossible": False},
      {"question": "Unanswerable?", "answers": [], "is_impossible": True}]} for p in range(3)]}
  squad = tmp_path / "dev-v2.0.json"
  squad.write_text(json.dumps({"data": [article(a) for a in range(30)]}))
  sample = rt.make_sample("qa_1", BYTES, 1024, options=rt.Options(qa_file=str(squad)))
  (query,) = sample.queries
  assert query.text.endswith("? Answer:") and "Unanswerable" not in query.text
  river = query.text.split("river ")[1].split(" ")[0]
  assert f"the river {river} flows north" in sample.context and 0.9 * 1024 <= sample.tokens <= 1024


def test_too_short_lengths_say_how_long_the_task_needs():
  with pytest.raises(ConfigError, match=r"ruler cwe: length 512 is too short.*take \d+ tokens"):
    rt.make_sample("cwe", BYTES, 512)


def test_the_labs_retrieval_prompts_end_with_their_answer_prefix():
  assert BYTES.decode(passkey_example(BYTES, 300, 0.5, 0).prompt).endswith("The pass key is")
  assert BYTES.decode(lines_example(BYTES, 600, 0.5, 0).prompt).endswith(" is")
  haystack = np.asarray(BYTES.encode(" ".join(rt.paul_graham_essay().words[:200])))
  needle = measure.needle_prompt(BYTES, haystack, 600, 0.5)
  assert BYTES.decode(needle.tokens).endswith("The best thing to do in San Francisco is")


# ----------------------------------------------------------------------------- scorers


def test_scorers_on_hand_cases():
  # string_match_all: the share of references found, case-insensitive.
  assert rt.string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
  assert rt.string_match_all("ALPHA beta", ["alpha", "Beta"]) == 1.0
  # string_match_part: 1 if any reference is found.
  assert rt.string_match_part("Paris, France", ["London", "paris"]) == 1.0
  assert rt.string_match_part("Rome", ["London", "Paris"]) == 0.0
  # RULER's task score: mean over predictions x 100, two decimals; control characters cleaned first.
  assert rt.task_score("niah_multivalue", ["1 and 2", "3", "nothing"], [["1", "2"], ["3", "4"], ["5"]]) == 50.0
  assert rt.task_score("qa_1", ["a", "b", "c"], [["A"], ["x"], ["y"]]) == 33.33
  assert rt.postprocess("  12\t34\x00 ") == "12\n34"


# ----------------------------------------------------------------------------- one prefill, many queries


@pytest.mark.parametrize("encoding", [pe.make("rope"),
                                      pe.make("dynamic_ntk", factor=4.0, original_max_position_embeddings=256)])
def test_one_prefill_serves_every_query_as_separate_forwards_would(tiny, encoding):
  """Logits after each query continuing one prefilled context equal a plain forward over the
  whole prompt; Dynamic NTK (its hooks move past 256 tokens) recomputes instead, and agrees too."""
  model = gen.Model(tiny.config, tiny.params, encoding)
  sample = rt.make_sample("niah_multikey_2", BYTES, 640, options=rt.Options(queries=3))
  prefix = gen.prefill(model, sample.context_ids, sample.tokens)
  forward = jax.jit(lambda p, t, h: Transformer(CFG).apply({"params": p}, t, hooks=h))
  for query in sample.queries:
    prompt = np.concatenate([sample.context_ids, query.ids])
    hooks = encoding.hooks(head_dim=CFG.head_dim, n_heads=CFG.n_heads, d_model=CFG.d_model, seq_len=len(prompt))
    want = np.asarray(forward(tiny.params, prompt[None], hooks))[0, -1]
    got = gen.prefix_logits(model, prefix, query.ids, [len(query.ids) - 1])[0]
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  query = sample.queries[0]
  whole = gen.generate(model, [np.concatenate([sample.context_ids, query.ids]).tolist()], 3)[0]
  assert gen.generate_after(model, prefix, query.ids, 3) == whole


def test_greedy_and_teacher_forced_agree_when_the_prefix_is_forced(tiny):
  """The model's own greedy continuation is a teacher-forced exact match; one changed token is not."""
  sample = rt.make_sample("niah_single_1", BYTES, 640)
  prefix = gen.prefill(tiny, sample.context_ids, sample.tokens)
  (query,) = sample.queries
  greedy = np.asarray(gen.generate_after(tiny, prefix, query.ids, 8), np.int32)
  as_query = lambda target: rt.Query(query.text, query.ids, query.answers, "", target)
  forced = ruler.teacher_forced(tiny, prefix, as_query(greedy))
  assert forced["exact"] and forced["token_accuracy"] == 1.0
  changed = greedy.copy()
  changed[4] = (changed[4] + 1) % 256
  forced = ruler.teacher_forced(tiny, prefix, as_query(changed))
  assert not forced["exact"] and 0.5 <= forced["token_accuracy"] < 1.0


# ----------------------------------------------------------------------------- runs and effective length


def test_ruler_end_to_end_on_a_tiny_model(tiny):
  tasks = ("niah_single_1", "niah_multikey_2", "fwe")
  rows = ruler.run(tiny, BYTES, None, tasks, [1024], 2, modes=ruler.MODES, options=rt.Options(queries=2),
                   method="rope", max_new_tokens=8)
  assert {r["task"] for r in rows} == set(tasks) and all(r["method"] == "rope" for r in rows)
  assert len([r for r in rows if r["task"] == "niah_multikey_2"]) == 4  # 2 haystacks x 2 queries
  assert all(0 <= r["score"] <= 100 and isinstance(r["exact"], bool) and r["tokens"] <= 1024 for r in rows)
  cells = {c.task: c for c in ruler.cells(rows, resamples=100)}
  assert (cells["niah_multikey_2"].haystacks, cells["niah_multikey_2"].queries) == (2, 4)
  assert (cells["fwe"].haystacks, cells["fwe"].queries) == (2, 2)  # one question per haystack only
  found = ruler.effective_length(rows, "rope", resamples=100)
  assert found.tasks == tuple(sorted(tasks)) and found.haystacks == 2


def _rows(scores: dict[int, list[list[float]]], task: str = "t", method: str = "m") -> list[dict]:
  """Rows with the given per-query scores: length -> one list of query scores per haystack."""
  return [{"method": method, "task": task, "length": n, "haystack": f"{task}/{n}/{h}", "score": s}
          for n, haystacks in scores.items() for h, queries in enumerate(haystacks) for s in queries]


def test_effective_lengths_follow_rulers_definition_and_the_relative_one():
  rows = _rows({1024: [[90.0]] * 4, 2048: [[87.0]] * 4, 4096: [[80.0]] * 4, 8192: [[88.0]] * 4})
  found = ruler.effective_length(rows, "m", resamples=200)
  assert (found.length, found.low, found.high) == (2048, 2048, 2048)  # 8K passes, but 4K before it does not
  # Inside a 2K training length the model averages 88.5; 85% of that is 75.2, which every length clears.
  relative = ruler.relative_effective_length(rows, 2048, "m", resamples=200)
  assert relative.length == 8192 and relative.threshold == pytest.approx(0.85 * 88.5)
  assert ruler.effective_length(_rows({1024: [[50.0]]}), "m", resamples=10).length is None
  with pytest.raises(ConfigError, match="inside the training length 512"):
    ruler.relative_effective_length(rows, 512, "m")


def test_intervals_resample_haystacks_not_queries():
  """Ten queries on one haystack are one unit: its interval has no width to give; ten haystacks do."""
  one = ruler.cells(_rows({1024: [[0.0] * 5 + [100.0] * 5]}), resamples=500)[0]
  many = ruler.cells(_rows({1024: [[0.0]] * 5 + [[100.0]] * 5}), resamples=500)[0]
  assert (one.haystacks, one.queries, many.haystacks, many.queries) == (1, 10, 10, 10)
  assert one.value.estimate == many.value.estimate == 50.0
  assert one.value.low == one.value.high == 50.0 and many.value.low < 40 and many.value.high > 60


def test_entry_point_writes_rows_and_resumes(tiny, tmp_path, monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import ruler as entry  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ruler, "load_model", lambda spec: ruler.LoadedModel(tiny, BYTES, 1024))
  argv = ["ruler", "--model=tiny", "--tasks=niah_single_1", "--lengths=640", "--modes=teacher_forced",
          "--samples=2", f"--workdir={tmp_path}"]
  for samples in (2, 3):
    flags.FLAGS.unparse_flags()
    flags.FLAGS([*argv[:-2], f"--samples={samples}", argv[-1]])
    entry.main(["ruler"])
  lines = (tmp_path / "results.jsonl").read_text().splitlines()
  assert [json.loads(line)["haystack"] for line in lines] == [f"niah_single_1/640/0/{i}" for i in range(3)]


def test_smollm2_at_512_tokens_finds_a_needle(optimized_compiles, smollm2_tokenizer):
  """CI-sized: one haystack, RULER's greedy scoring (the 30-layer decode repays optimised compiles)."""
  del optimized_compiles
  loaded = ruler.load_model("smollm2")
  assert loaded.training_length == 8192
  rows = ruler.run(loaded.model, smollm2_tokenizer, None, ["niah_single_1"], [512], 1)
  (row,) = rows
  assert row["score"] == 100.0 and row["answers"][0] in row["prediction"]
  assert row["tokens"] + rt.TASKS["niah_single_1"].tokens_to_generate <= 512
