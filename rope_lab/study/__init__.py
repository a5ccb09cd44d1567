"""The reference study as a library: train, fine-tune, evaluate, draw, report.

``run_study(cfg, workdir)`` runs every phase in order and is resumable: training runs
resume from their checkpoints, and a measurement already in ``results.jsonl`` under the
same configuration hash is not repeated. Work directory::

  runs/<name>/        training runs (base_s0, ft_pi4_lr0.001_s0, grid_pi8_lr0.001_s0, ape_s0, xpos_s0, ...)
  arrays/             attention maps and mean q/k (.npz) for the figures
  figures/            PNG figures
  results.jsonl       one row per measurement (rope_lab.results)
  report.md           figures + tables + the claim-by-claim comparison

One idea per module:

  config        StudyConfig and its study_config.json
  declarations  the declared fine-tunes and pretraining variants, parsed once (RunDeclaration)
  runs          the training runs (RunSpec), and how a (run, plan) row is grouped and named
  measurements  Study: the measurement cache (perplexity, retrieval, attention), one row each
  phases        the phases in order (PHASES), run_study, write_outputs
  claims        one rule per paper's contrast, judged by a paired interval (CLAIMS)
  statistics    paired block-bootstrap intervals over windows, and verdicts
  report_text   report.md's markdown: setup, claims table, number tables
  figure_data   the numbers each figure shows
  figures       the drawing
"""

from rope_lab.study.claims import CLAIMS, Claim, evaluate_claims  # noqa: F401
from rope_lab.study.config import (  # noqa: F401
    StudyConfig,
    read_study_config,
    save_config,
    study_config_from_config_dict,
)
from rope_lab.study.measurements import Study, plan_kind  # noqa: F401
from rope_lab.study.phases import (  # noqa: F401
    PHASES,
    evaluate_attention,
    evaluate_perplexity,
    evaluate_retrieval,
    finetune_specs,
    run_study,
    write_outputs,
)
from rope_lab.study.runs import (  # noqa: F401
    RunSpec, base_run, declared_runs, extra_runs, finetune_grid, finetune_run, finetune_runs, run_label, variant_runs,
    with_plan_ids)
from rope_lab.study.declarations import RunDeclaration, parse_run  # noqa: F401
