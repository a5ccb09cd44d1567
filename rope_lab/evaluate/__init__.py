"""Evaluation of trained checkpoints under any positional encoding.

* ``runs``: ``load_run(workdir)`` -> TrainedRun (typed configs + restored parameters).
* ``perplexity``: sliding-window perplexity at a window length (``perplexity_at_length``,
  ``perplexity_vs_length``) and the reusable scorer ``window_nll(cfg, params, windows,
  hooks)`` (jit-compiled once per shape; encodings are traced arguments).
* ``retrieval``: passkey / key-value line retrieval in one teacher-forced pass.
* ``attention_maps``: a model's mean attention maps, attention mass by distance, mean q/k.
* ``analytic``: similarity of probe vectors by position for any encoding (no model).
* ``plans``: the encodings applied at each evaluation length (``"matched"`` scales).
* ``checkpoint_eval``: all of the above for one checkpoint -> results.jsonl
  (``experiments/evaluate.py``).
* ``retrieval_data``: passkey rows mixed into training (the optional probe model).
"""

from rope_lab.evaluate.analytic import PROBES, probe_pairs, probe_score_by_distance, probe_score_grid
from rope_lab.evaluate.attention_maps import (binned_mass, distance_bins, mass_by_distance,
                                              mean_attention_maps, mean_qk, pool_map)
from rope_lab.evaluate.perplexity import (NLL, LengthResult, document_windows, eval_model_config,
                                          logits_fn, perplexity_at_length, perplexity_vs_length,
                                          stride_for, trace_count, window_nll)
from rope_lab.evaluate.plans import (MATCHED, EncodingPlan, ape_plans, describe, plan_from_json,
                                     rope_family_plans)
from rope_lab.evaluate.retrieval import RetrievalScore, score_examples, summarize_scores
from rope_lab.evaluate.runs import (TrainedRun, encoding_hooks, experiment_from_json, load_run,
                                    read_experiment)

__all__ = [
    "MATCHED", "NLL", "PROBES", "EncodingPlan", "LengthResult", "RetrievalScore", "TrainedRun",
    "ape_plans", "binned_mass", "describe", "distance_bins", "document_windows", "encoding_hooks",
    "eval_model_config", "experiment_from_json", "load_run", "logits_fn", "mass_by_distance",
    "mean_attention_maps", "mean_qk", "perplexity_at_length", "perplexity_vs_length",
    "plan_from_json", "pool_map", "probe_pairs", "read_experiment", "rope_family_plans",
    "probe_score_by_distance", "score_examples", "probe_score_grid", "stride_for", "summarize_scores",
    "trace_count", "window_nll",
]
