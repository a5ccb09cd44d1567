"""The zero-shot context-extension study on a real pretrained model (``configs/study_real.py``).

config.py (the frozen study config), documents.py (long documents in the model's tokenizer),
measure.py (losses and attention mass from one forward pass; retrieval prompts and greedy
scoring), run.py (the study: rows of results.jsonl, resumable), claims.py (rules fixed
before the run, judged by intervals), report.py (figures and report.md).
"""

from rope_lab.zero_shot.config import ZeroShotConfig, config_from_dict
from rope_lab.zero_shot.report import write_outputs
from rope_lab.zero_shot.run import run_study

__all__ = ["ZeroShotConfig", "config_from_dict", "run_study", "write_outputs"]
