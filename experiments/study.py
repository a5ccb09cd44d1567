"""Run a study: the reference context-extension study (train, fine-tune, evaluate, draw, report),
or, with configs/study_real.py, the zero-shot study on a real pretrained model.

  python -m experiments.study --workdir=/tmp/rope_lab/study           # full (<= 45 min, 2 CPU cores)
  python -m experiments.study --workdir=/tmp/rope_lab/study_quick --quick
  python -m experiments.study --workdir=DIR --config=configs/study.py:quick --config.seeds=0,1
  python -m experiments.study --workdir=DIR --report_only   # redraw figures and report.md

  python -m experiments.study --config=configs/study_real.py --workdir=DIR   # the real-model study

Writes DIR/results.jsonl, DIR/figures/*.png and DIR/report.md. Running it again in the
same directory resumes: finished training runs and measurements are not repeated.

The training runs can instead be trained by a sweep (any launcher) into DIR/runs first;
the study then finds them trained and only evaluates and reports:

  python -m experiments.sweep --config=configs/study.py:quick,sweep=base --workdir=DIR/runs
  python -m experiments.sweep --config=configs/study.py:quick,sweep=finetune --workdir=DIR/runs
  python -m experiments.study --workdir=DIR --quick
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Study config file (default configs/study.py, or its :quick variant with --quick).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory: runs, results.jsonl, figures, report.md.")
_QUICK = flags.DEFINE_bool("quick", False, "The quick variant (configs/study.py:quick).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Only redraw the figures and report.md from the work directory's results.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  from rope_lab.running import workdir as workdir_lib
  workdir = cli.absolute_path(_WORKDIR.value)
  with workdir_lib.locked(workdir):
    cli.log_to_file(workdir)
    _run(workdir)


def _run(workdir: str) -> None:
  from rope_lab.running import cli  # pylint: disable=g-import-not-at-top
  if _REPORT_ONLY.value:
    import os  # pylint: disable=g-import-not-at-top
    from rope_lab import study, zero_shot  # pylint: disable=g-import-not-at-top
    real = os.path.exists(os.path.join(workdir, zero_shot.config.CONFIG_FILE))
    cli.say(f"report: {(zero_shot if real else study).write_outputs(workdir)}")
    return
  config = _CONFIG.value
  if config is not None and config.get("kind") == "zero_shot":  # configs/study_real.py
    if _QUICK.value:
      raise app.UsageError("--quick belongs to configs/study.py; configs/study_real.py has sizes (:size=ci|cpu|gpu)")
    from rope_lab import zero_shot  # pylint: disable=g-import-not-at-top
    cli.say(f"report: {zero_shot.run_study(zero_shot.config_from_dict(config), workdir, log=cli.say)}")
    return
  if config is None:
    from configs import study as study_configs  # pylint: disable=g-import-not-at-top
    config = study_configs.get_config("quick" if _QUICK.value else None)
  elif _QUICK.value:
    raise app.UsageError("--quick picks configs/study.py:quick; with --config name the variant there instead")
  from rope_lab import study  # pylint: disable=g-import-not-at-top
  cfg = study.study_config_from_config_dict(config)
  report = study.run_study(cfg, workdir, log=cli.say)
  cli.say(f"report: {report}")


if __name__ == "__main__":
  from rope_lab.running import cli as _cli  # pylint: disable=g-import-not-at-top
  _cli.run(main, resume_hint="run the same command again to resume; finished runs and "
                             "measurements are kept")
