"""The training loop: data -> jitted steps -> metrics, evaluation and checkpoints.

``run(exp, workdir)`` resumes from the newest checkpoint in ``workdir`` if there is one,
otherwise starts fresh (or from ``init_from``'s parameters), and trains up to
``exp.train.steps``. SIGTERM makes it save at the next step boundary and return; a
non-finite loss stops it without saving, so the newest checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from rope_lab.training import resume

from rope_lab.running import sharding
from rope_lab.running import workdir as workdir_lib
from rope_lab.training.checkpoint import Checkpointer, committed_latest_step, latest_step_of
from rope_lab.training.checkpoint import check_safetensors_complete, restore_params
from rope_lab.config import (CHECKPOINT_SCHEMES, GGUF_SCHEME, HF_SCHEME, ConfigError, ExperimentConfig,
                             TrainConfig, experiment_to_dict)
from rope_lab.interop import gguf
from rope_lab.interop import hf
from rope_lab.data import DataConfig, get_tokenizer, make_train_iterator, save_tokenizer_spec
from rope_lab.data.position_skips import pose_positions
from rope_lab.errors import RopeLabError
from rope_lab.training.log import MetricsLog, Progress
from rope_lab.training.step import Program, TrainSetup, TrainState, build_program


class NonFiniteLossError(RopeLabError, RuntimeError):
  """The loss or gradient norm became inf/NaN; the run stopped without saving that state."""


class DataIterator(Protocol):
  def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


# (split, *, seq_len, global_batch_size, seed, process_index, process_count) -> iterator of
# this process's rows: {"inputs", "targets", "positions", "segment_ids", "loss_mask"}.
DataSource = Callable[..., DataIterator]


def rope_lab_data_source(data: DataConfig) -> DataSource:
  """The project's data pipeline: rows of ``split``, tokenized by ``data``'s tokenizer (a
  SentencePiece model is trained on ``data.train_split`` whichever split is read), with
  ``data.retrieval_mix`` of the training rows replaced by short retrieval rows."""
  def make(split: str, **kwargs) -> DataIterator:
    iterator = make_train_iterator(data, split=split, **kwargs)
    if split != data.train_split or not data.retrieval_mix:
      return iterator
    from rope_lab.evaluate.retrieval_data import RetrievalMixIterator  # pylint: disable=g-import-not-at-top
    lengths = (data.retrieval_min_length, data.retrieval_max_length) if data.retrieval_max_length else None
    return RetrievalMixIterator(iterator, get_tokenizer(data), seq_len=kwargs["seq_len"],
                                fraction=data.retrieval_mix, seed=kwargs["seed"], example_lengths=lengths)
  return make


@dataclasses.dataclass(frozen=True)
class TrainResult:
  step: int  # steps completed
  status: str  # "completed" or "preempted"
  train_loss: float | None  # loss of the last step run in this call
  eval_loss: float | None  # the last evaluation in this call


class _StopRequest:
  """Set by SIGTERM; the loop reads it at step boundaries (saving mid-step is unsafe)."""

  def __init__(self):
    self.requested = False

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield  # signal handlers can only be set from the main thread
      return
    previous = signal.signal(signal.SIGTERM, self._handle)
    try:
      yield
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _write_run_files(workdir: epath.Path, exp: ExperimentConfig, uses_project_data: bool):
  """config.json (resolved values) and, for the project's tokenizers, their spec; a fresh
  start also drops the resume history of checkpoints that are no longer there."""
  (workdir / "config.json").write_text(json.dumps(experiment_to_dict(exp), indent=2))
  (workdir / resume.HISTORY_FILE).unlink(missing_ok=True)
  if uses_project_data:
    save_tokenizer_spec(str(workdir), get_tokenizer(exp.data))


def check_vocabulary(exp: ExperimentConfig) -> None:
  """The tokenizer's ids must fit the model's embedding table (checked before compiling)."""
  size = get_tokenizer(exp.data).vocab_size
  if size > exp.model.vocab_size:
    raise ConfigError(f"config.model.vocab_size={exp.model.vocab_size} is smaller than the "
                      f"tokenizer's {size} ids (config.data.tokenizer={exp.data.tokenizer!r})")


class _Loop:
  """State of one run() call: what has been logged, saved and measured."""

  def __init__(self, cfg: TrainConfig, checkpointer: Checkpointer, log: MetricsLog,
               progress: Progress, last_saved: int | None,
               on_first_save: Callable[[], None] | None = None):
    self.cfg, self.checkpointer, self.log, self.progress = cfg, checkpointer, log, progress
    self.last_saved = last_saved
    # Accepted resume changes are recorded once a checkpoint was saved under them.
    self.on_first_save = on_first_save
    self.pending: list[tuple[int, dict]] = []
    self.train_loss: float | None = None
    self.window_start = time.perf_counter()
    self.window_steps = 0

  def flush(self) -> None:
    """Fetches the queued step metrics (a host sync), checks them, logs them."""
    if not self.pending:
      return
    rows = jax.device_get(self.pending)
    self.pending = []
    cfg = self.cfg
    elapsed = time.perf_counter() - self.window_start
    tokens_per_second = self.window_steps * cfg.global_batch_size * cfg.seq_len / elapsed
    for step, metrics in rows:
      metrics = {k: float(v) for k, v in metrics.items()}
      if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        saved = (f"step {self.last_saved} in {self.checkpointer.directory}"
                 if self.last_saved is not None else "none (no checkpoint was written)")
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: loss={metrics['loss']}, grad_norm="
            f"{metrics['grad_norm']}; the run stops without saving this state. "
            f"Last good checkpoint: {saved}")
      self.log.write(step, "train", metrics)
    step, metrics = rows[-1]
    self.train_loss = float(metrics["loss"])
    self.log.write(step, "speed", {"tokens_per_second": tokens_per_second})
    self.progress.update(step, self.train_loss, tokens_per_second)
    self.restart_window()

  def restart_window(self) -> None:
    self.window_start, self.window_steps = time.perf_counter(), 0

  def save(self, step: int, state: TrainState, data_state: Any) -> None:
    self.checkpointer.save(step, state, data_state)
    self.last_saved = step
    if self.on_first_save is not None:
      self.on_first_save()
      self.on_first_save = None
    self.progress.message(f"checkpoint saved at step {step}")


def _eval_batches(cfg: TrainConfig, setup: TrainSetup, data_source: DataSource) -> list:
  """``eval_batches`` held-out batches of one micro-batch each (what fits in memory),
  fetched once so every evaluation sees the same tokens."""
  rows = cfg.global_batch_size // cfg.grad_accum_steps
  block, blocks = sharding.process_row_block(setup.batch_sharding, rows)
  iterator = data_source(cfg.eval_split, seq_len=cfg.seq_len, global_batch_size=rows,
                         seed=cfg.seed, process_index=block, process_count=blocks)
  return [sharding.global_batch(next(iterator), setup.batch_sharding, rows)
          for _ in range(cfg.eval_batches)]


def _evaluate(setup: TrainSetup, eval_step, params, batches) -> float:
  totals = [eval_step(params, batch, setup.hooks) for batch in batches]
  loss_sum, count = jax.device_get((sum(t[0] for t in totals), sum(t[1] for t in totals)))
  return float(loss_sum) / max(float(count), 1.0)


def _start_state(program: Program, checkpointer: Checkpointer, cfg: TrainConfig,
                 train_iter: DataIterator, progress: Progress) -> TrainState:
  """Newest checkpoint of this run, else init_from's parameters, else a fresh init."""
  setup = program.setup
  latest = checkpointer.latest_step()
  if latest is not None:
    stored, data_state = checkpointer.restore(latest, setup.abstract_checkpoint)
    train_iter.set_state(data_state)
    progress.message(f"resumed from {checkpointer.directory} at step {latest}")
    return program.from_checkpoint(stored)
  if cfg.init_from is not None and cfg.init_from.startswith(CHECKPOINT_SCHEMES):
    shardings = jax.tree_util.tree_map(lambda leaf: leaf.sharding, setup.abstract_state.params)
    params = _checkpoint_params(cfg, setup.exp.model, setup.hooks, shardings)
    kept = f" (its first {cfg.init_from_layers} blocks)" if cfg.init_from_layers else ""
    progress.message(f"parameters from {cfg.init_from}{kept}; optimizer and data fresh")
    return program.state_from_params(params)
  if cfg.init_from is not None:
    step = latest_step_of(cfg.init_from)
    params = restore_params(cfg.init_from, setup.abstract_state.params, step)
    progress.message(f"parameters from {cfg.init_from} (step {step}); optimizer and data fresh")
    return program.state_from_params(params)
  return program.init_state(cfg.seed)


def _checkpoint_params(cfg: TrainConfig, model, hooks, shardings):
  """init_from=hf:/gguf:'s parameters (its first ``init_from_layers`` blocks) on the run's shardings."""
  if cfg.init_from.startswith(GGUF_SCHEME):
    loaded = gguf.load(cfg.init_from[len(GGUF_SCHEME):], n_layers=cfg.init_from_layers or None)
    return jax.device_put(loaded.params, shardings)
  # The blocks past init_from_layers are the tensors a truncated model leaves unread.
  return hf.load_params(cfg.init_from[len(HF_SCHEME):], model, hooks, shardings,
                        strict=not cfg.init_from_layers)


def with_checkpoint_architecture(exp: ExperimentConfig) -> ExperimentConfig:
  """With init_from=hf:<dir> or gguf:<file>, ``exp`` with the checkpoint's architecture (its
  config.json or metadata; ``init_from_layers`` blocks if set); config.model keeps only how the
  model runs (attention path, chunk, dtype, masking, layer scan)."""
  train = exp.train
  if train.init_from is None or not train.init_from.startswith(CHECKPOINT_SCHEMES):
    if train.init_from_layers:
      raise ConfigError(f"config.init_from_layers={train.init_from_layers} needs init_from=hf:<dir> or "
                        f"gguf:<file>, got init_from={train.init_from!r}")
    return exp
  if train.init_from.startswith(GGUF_SCHEME):
    config = gguf.hf_config(gguf.read_file(train.init_from[len(GGUF_SCHEME):]))
  else:
    config = hf.read_config(train.init_from[len(HF_SCHEME):])
  if train.init_from_layers:
    blocks = int(config["num_hidden_layers"])
    if train.init_from_layers > blocks:
      raise ConfigError(f"config.init_from_layers={train.init_from_layers}: {train.init_from} has {blocks} blocks")
    config = {**config, "num_hidden_layers": train.init_from_layers}
  return dataclasses.replace(exp, model=hf.model_config_for_run(config, exp.model))


def run(exp: ExperimentConfig, workdir: str, *, data_source: DataSource | None = None,
        devices=None) -> TrainResult:
  """Trains ``exp`` in ``workdir`` (resuming there if possible); see the module docstring.

  ``data_source`` replaces the project's data pipeline (tests, notebooks); ``devices``
  restricts the mesh to some of the devices (single-process only). The work directory is
  locked for the whole call (``rope_lab.running.workdir``); a resume is validated against the
  stored config before anything is written (``rope_lab.training.resume``).
  """
  exp = with_checkpoint_architecture(exp)
  workdir = os.path.abspath(workdir)  # orbax needs absolute paths
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.locked(workdir):
    return _run_locked(exp, workdir, data_source=data_source, devices=devices)


def _run_locked(exp: ExperimentConfig, workdir: str, *, data_source: DataSource | None,
                devices) -> TrainResult:
  cfg = exp.train
  workdir_path = epath.Path(workdir)
  resumed_from = committed_latest_step(workdir)
  changes = {}
  if resumed_from is not None:
    changes = resume.check_resume(workdir, experiment_to_dict(exp), resumed_from)
  uses_project_data = data_source is None
  if uses_project_data:
    check_vocabulary(exp)
    data_source = rope_lab_data_source(exp.data)
  if cfg.init_from is not None and resumed_from is None:
    # A wrong init_from fails before anything is compiled.
    if cfg.init_from.startswith(HF_SCHEME):
      hf.read_config(cfg.init_from[len(HF_SCHEME):])
      check_safetensors_complete(cfg.init_from[len(HF_SCHEME):])
    elif cfg.init_from.startswith(GGUF_SCHEME):
      gguf.read_file(cfg.init_from[len(GGUF_SCHEME):])
    else:
      latest_step_of(cfg.init_from)
  program = build_program(exp, devices)
  setup = program.setup
  primary = jax.process_index() == 0
  if primary and resumed_from is None:
    _write_run_files(workdir_path, exp, uses_project_data)

  block, blocks = sharding.process_row_block(setup.batch_sharding, cfg.global_batch_size)
  iterator_args = dict(seq_len=cfg.seq_len, global_batch_size=cfg.global_batch_size,
                       seed=cfg.seed, process_index=block, process_count=blocks)
  train_iter = data_source(exp.data.train_split, **iterator_args)
  checkpointer = Checkpointer(workdir, keep=cfg.keep_checkpoints,
                              async_save=cfg.async_checkpointing)
  log = MetricsLog(str(workdir_path), enabled=primary, tensorboard=cfg.tensorboard,
                   resume_step=resumed_from or 0)
  progress = Progress(cfg.steps, 0, enabled=primary)
  on_first_save = (lambda: resume.record_changes(workdir, changes, resumed_from)) \
      if primary and changes else None
  try:
    state = _start_state(program, checkpointer, cfg, train_iter, progress)
    eval_batches = _eval_batches(cfg, setup, data_source) if cfg.eval_every else []
    loop = _Loop(cfg, checkpointer, log, progress, checkpointer.latest_step(), on_first_save)
    return _train(program, cfg, state, train_iter, eval_batches, loop)
  finally:
    checkpointer.wait()  # an in-flight save completes; a failed run never adds one
    checkpointer.close()
    progress.close()
    log.close()


def _train(program: Program, cfg: TrainConfig, state: TrainState, train_iter: DataIterator,
           eval_batches: list, loop: _Loop) -> TrainResult:
  """Steps from ``state.step`` to ``cfg.steps``: log, evaluate, save, obey SIGTERM."""
  setup = program.setup
  start = int(jax.device_get(state.step))
  loop.progress.restart(start)
  loop.restart_window()  # the first window still includes compiling the step
  stop = _StopRequest()
  status, eval_loss, step = "completed", None, start
  with stop.installed(), sharding.logical_context(setup.mesh, setup.rules):
    for step in range(start + 1, cfg.steps + 1):
      rows = next(train_iter)
      if cfg.pose_target_length:  # PoSE: a draw per step and process, the same on a resumed run
        rng = np.random.default_rng([cfg.seed, step, jax.process_index()])
        rows = {**rows, "positions": pose_positions(rows["positions"], rows["segment_ids"],
                                                    cfg.pose_target_length, rng)}
      batch = sharding.global_batch(rows, setup.batch_sharding, cfg.global_batch_size)
      state, metrics = program.train_step(state, batch, setup.hooks)
      loop.pending.append((step, metrics))
      loop.window_steps += 1
      last = step == cfg.steps
      evaluate = cfg.eval_every and (step % cfg.eval_every == 0 or last)
      save = last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
      sync = last or evaluate or save or step % cfg.log_every == 0
      # One process reads its flag at any step; several agree on it at sync points only,
      # so that every process saves at the same step.
      stopping = stop.requested if jax.process_count() == 1 else (
          sync and _any_process(stop.requested))
      if sync or stopping:
        loop.flush()
      if evaluate:
        eval_loss = _evaluate(setup, program.eval_step, program.model_params(state), eval_batches)
        loop.log.write(step, "eval", {"loss": eval_loss,
                                      "perplexity": math.exp(min(eval_loss, 50.0))})
        loop.progress.message(f"step {step}: eval loss {eval_loss:.4f}")
      if save or stopping:
        loop.save(step, program.to_checkpoint(state), train_iter.get_state())
      if evaluate or save:
        loop.restart_window()  # tokens/s measures training, not evaluation or saving
      if stopping:
        status = "preempted"
        loop.progress.message(f"SIGTERM: stopped at step {step} after saving a checkpoint")
        break
  return TrainResult(step=step, status=status, train_loss=loop.train_loss, eval_loss=eval_loss)
