"""The pieces a training run compiles: sharded state init, the train step, the eval step.

Init follows eval_shape -> shardings -> jit(init, out_shardings): the parameters are
created directly in their final layout, never gathered on one device. The steps are
jitted with explicit in/out shardings and donate the old state, so parameters and
optimizer moments are updated in place.

A LoRA run (``config.lora_rank``, ``rope_lab.model.lora``) differentiates and updates only its
trainable values (the adapters and the extras: embeddings, norms); the optimizer state
covers those alone, and the frozen kernels pass through the step unchanged. Its
checkpoints hold the merged weights (:func:`make_checkpoint_conversions`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rope_lab.model import lora as lora_lib
from rope_lab.running import sharding
from rope_lab.config import ConfigError, ExperimentConfig
from rope_lab.model.forward import encoding_hooks, param_initializer, param_layout, token_losses
from rope_lab.model.skeleton import Transformer
from rope_lab.training.optimizer import learning_rate_schedule, make_optimizer
from rope_lab.pe import Hooks

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any  # with LoRA: the frozen base kernels and the trained embeddings/norms
  opt_state: Any  # of the trainable values (see TrainSetup.trainable_of)
  # LoRA adapters (rope_lab.model.lora), None without. In the checkpoint form of a state
  # (Program.to_checkpoint) params are the merged weights and this holds
  # {"adapters": ..., "frozen": the base kernels under them}.
  adapters: Any = None


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything fixed for a run: mesh, model, optimizer, hooks and the state's layout."""

  # The experiment as compiled: data and the loop-only TrainConfig fields are normalised
  # (see build_program); the loop reads the run's own values, not these.
  exp: ExperimentConfig
  mesh: Mesh
  rules: tuple
  model: nn.Module
  optimizer: optax.GradientTransformation
  hooks: Hooks  # placed on the mesh, replicated
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  state_shardings: TrainState
  batch_sharding: NamedSharding
  lora: lora_lib.LoraSpec | None = None  # None: every parameter trains
  trainable_shardings: Any = None  # of trainable_of(state)
  abstract_checkpoint: TrainState | None = None  # what a checkpoint of this run holds

  def trainable_of(self, state: TrainState):
    """What the optimizer updates: all parameters, or the adapters and the extras."""
    if self.lora is None:
      return state.params
    return {"adapters": state.adapters, "extras": lora_lib.extra_params(state.params, self.lora)}

  def with_trainable(self, state: TrainState, trainable) -> tuple[Any, Any]:
    """(params, adapters) of ``state`` with ``trainable`` put back."""
    if self.lora is None:
      return trainable, None
    return lora_lib.replace_leaves(state.params, trainable["extras"]), trainable["adapters"]

  @property
  def replicated(self) -> NamedSharding:
    return sharding.replicated(self.mesh)


def build_setup(exp: ExperimentConfig, devices=None) -> TrainSetup:
  """Mesh, model, optimizer and state shardings; checks batch/mesh fit before compiling."""
  cfg = exp.train
  mesh = sharding.make_mesh(cfg.mesh_shape, devices)
  ways = sharding.batch_parallelism(mesh)
  micro_rows = cfg.global_batch_size // cfg.grad_accum_steps
  if micro_rows % ways:
    raise ConfigError(
        f"config.global_batch_size={cfg.global_batch_size} / grad_accum_steps="
        f"{cfg.grad_accum_steps} = {micro_rows} rows per micro-batch is not divisible by the "
        f"{ways}-way batch split of mesh {dict(mesh.shape)}")
  model = Transformer(exp.model)
  optimizer = make_optimizer(cfg)
  replicated = sharding.replicated(mesh)
  # PoSE trains at positions up to pose_target_length - 1: the hooks must reach them.
  hooks_length, where = ((cfg.pose_target_length, "config.pose_target_length") if cfg.pose_target_length
                         else (cfg.seq_len, "config.seq_len"))
  # (A learned table shorter than that is refused there, naming its max_length.)
  hooks = jax.device_put(encoding_hooks(exp.model, exp.encoding, hooks_length, where=where), replicated)
  if cfg.s2_attn_group_fraction and exp.model.n_heads % 2:
    raise ConfigError(f"config.s2_attn_group_fraction={cfg.s2_attn_group_fraction}: shifted sparse "
                      f"attention shifts half of the heads; config.model.n_heads={exp.model.n_heads} is odd")
  abstract_params, param_shardings = param_layout(exp.model, hooks, cfg.seq_len, mesh, cfg.logical_rules)
  spec = lora_lib.spec_of(cfg)
  abstract_adapters = adapter_shardings = None
  abstract_trainable, trainable_shardings = abstract_params, param_shardings
  if spec is not None:
    abstract_adapters = jax.eval_shape(
        lambda p: lora_lib.init_adapters(jax.random.key(0), p, spec), abstract_params)
    # Adapters are small (r x (in + out) per kernel): replicated.
    adapter_shardings = jax.tree.map(lambda _: replicated, abstract_adapters)
    abstract_trainable = {"adapters": abstract_adapters,
                          "extras": lora_lib.extra_params(abstract_params, spec)}
    trainable_shardings = {"adapters": adapter_shardings,
                           "extras": lora_lib.extra_params(param_shardings, spec)}
  abstract_opt = jax.eval_shape(optimizer.init, abstract_trainable)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt, trainable_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                               adapters=adapter_shardings)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt, adapters=abstract_adapters)
  with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  abstract = jax.tree.map(with_sharding, abstract, state_shardings)
  abstract_checkpoint = abstract
  if spec is not None:
    abstract_checkpoint = abstract.replace(adapters={
        "adapters": abstract.adapters, "frozen": lora_lib.frozen_kernels(abstract.params, abstract.adapters)})
  return TrainSetup(exp=exp, mesh=mesh, rules=tuple(cfg.logical_rules), model=model,
                    optimizer=optimizer, hooks=hooks, abstract_state=abstract,
                    state_shardings=state_shardings,
                    batch_sharding=sharding.batch_sharding(mesh), lora=spec,
                    trainable_shardings=trainable_shardings,
                    abstract_checkpoint=abstract_checkpoint)


def make_init(setup: TrainSetup) -> Callable[[int], TrainState]:
  """seed -> fresh parameters and optimizer state, created in place on the mesh."""
  init_params = param_initializer(setup.model, setup.hooks, setup.exp.train.seq_len)

  def init(rng):
    return _fresh_state(setup, nn.meta.unbox(init_params(rng)))

  init_jit = jax.jit(init, out_shardings=setup.state_shardings)

  def init_state(seed: int) -> TrainState:
    with sharding.logical_context(setup.mesh, setup.rules):
      return init_jit(_init_key(seed))
  return init_state


def make_state_from_params(setup: TrainSetup) -> Callable[[Any], TrainState]:
  """params (e.g. restored from another run) -> step 0 with a fresh optimizer state.

  Skips the random initialisation (and its compilation) that would be thrown away.
  """
  def from_params(params):
    return _fresh_state(setup, params)
  return jax.jit(from_params, in_shardings=(setup.state_shardings.params,),
                 out_shardings=setup.state_shardings)


def _fresh_state(setup: TrainSetup, params) -> TrainState:
  """Step 0 on ``params``: new adapters (LoRA) and a fresh optimizer state."""
  adapters = None
  if setup.lora is not None:
    adapters = lora_lib.init_adapters(_adapter_key(setup.exp.train.seed), params, setup.lora)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None, adapters=adapters)
  return state.replace(opt_state=setup.optimizer.init(setup.trainable_of(state)))


def _adapter_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 2)


def _init_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 0)


def _step_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), 1)


def _apply(setup: TrainSetup, params, batch: Batch, hooks: Hooks, rng,
           shifted_group_size: int = 0) -> jax.Array:
  return setup.model.apply({"params": params}, batch["inputs"], hooks=hooks,
                           positions=batch["positions"], segment_ids=batch["segment_ids"],
                           rng=rng, shifted_group_size=shifted_group_size)


def _train_forward(setup: TrainSetup, state: TrainState, trainable, batch: Batch, hooks: Hooks,
                   rng) -> jax.Array:
  """Training logits: S2-Attn when configured; with LoRA the adapters run unmerged beside
  the frozen kernels, which therefore get no gradient."""
  group = setup.exp.train.s2_attn_group_size
  params, adapters = setup.with_trainable(state, trainable)
  if adapters is None:
    return _apply(setup, params, batch, hooks, rng, group)
  with lora_lib.unmerged(adapters, setup.lora.scale):
    return _apply(setup, params, batch, hooks, rng, group)


def _micro_batches(batch: Batch, count: int, mesh: Mesh) -> Batch:
  """[B, ...] -> [count, B / count, ...] where every micro-batch spans all data shards.

  Row r goes to micro-batch r % count, so each device keeps working on its own rows
  instead of micro-batch i living on 1/count of the devices.
  """
  spec = NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES))

  def split(x):
    x = x.reshape((x.shape[0] // count, count) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, spec)
  return jax.tree.map(split, batch)


def make_train_step(setup: TrainSetup) -> Callable[[TrainState, Batch, Hooks], tuple]:
  """Jitted (state, global batch, hooks) -> (new state, metrics); the old state is donated."""
  cfg = setup.exp.train
  schedule = learning_rate_schedule(cfg)
  step_key = _step_key(cfg.seed)
  accum = cfg.grad_accum_steps
  trainable_shardings = setup.trainable_shardings

  def step(state: TrainState, batch: Batch, hooks: Hooks):
    rng = jax.random.fold_in(step_key, state.step)
    # Normalising by the whole batch's token count makes accumulated micro-batch
    # gradients sum to exactly the full-batch gradient.
    total_tokens = jnp.maximum(batch["loss_mask"].sum(), 1.0)

    def loss_fn(trainable, micro, key):
      logits = _train_forward(setup, state, trainable, micro, hooks, key)
      return (token_losses(logits, micro["targets"]) * micro["loss_mask"]).sum() / total_tokens

    grad_fn = jax.value_and_grad(loss_fn)
    trainable = setup.trainable_of(state)
    if accum == 1:
      loss, grads = grad_fn(trainable, batch, rng)
    else:
      def body(carry, xs):
        micro, index = xs
        loss_i, grads_i = grad_fn(trainable, micro, jax.random.fold_in(rng, index))
        loss_sum, grad_sum = carry
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads_i)
        return (loss_sum + loss_i, jax.lax.with_sharding_constraint(grad_sum, trainable_shardings)), None

      zeros = jax.tree.map(jnp.zeros_like, trainable)
      micros = _micro_batches(batch, accum, setup.mesh)
      (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                      (micros, jnp.arange(accum)))
    updates, opt_state = setup.optimizer.update(grads, state.opt_state, trainable)
    params, adapters = setup.with_trainable(state, optax.apply_updates(trainable, updates))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, adapters=adapters)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step), "tokens": total_tokens}
    return new_state, metrics

  return jax.jit(step,
                 in_shardings=(setup.state_shardings, setup.batch_sharding, setup.replicated),
                 out_shardings=(setup.state_shardings, setup.replicated),
                 donate_argnums=(0,))


def make_eval_step(setup: TrainSetup) -> Callable[[Any, Batch, Hooks], tuple]:
  """Jitted (params, batch, hooks) -> (summed token loss, token count); no randomness."""
  def step(params, batch: Batch, hooks: Hooks):
    logits = _apply(setup, params, batch, hooks, None)
    losses = token_losses(logits, batch["targets"]) * batch["loss_mask"]
    return losses.sum(), batch["loss_mask"].sum()

  return jax.jit(step,
                 in_shardings=(setup.state_shardings.params, setup.batch_sharding,
                               setup.replicated),
                 out_shardings=(setup.replicated, setup.replicated))


def make_checkpoint_conversions(setup: TrainSetup) -> tuple[Callable, Callable, Callable]:
  """(model_params, to_checkpoint, from_checkpoint) of a run's states.

  model_params(state): the weights the model runs with (LoRA: merged), what evaluation
  and the checkpoint's ``params`` item hold, so readers of a checkpoint need not know
  about adapters. to/from_checkpoint convert a state to what a checkpoint stores and back:
  with LoRA, the merged weights plus the adapters and the frozen kernels under them (so
  a resume restores the base weights exactly rather than subtracting the update again).
  """
  spec = setup.lora
  if spec is None:
    identity = lambda state: state
    return (lambda state: state.params), identity, identity
  checkpoint_shardings = jax.tree.map(lambda a: a.sharding, setup.abstract_checkpoint)

  def model_params(state):
    return lora_lib.merge(state.params, state.adapters, spec.scale)

  def to_checkpoint(state):
    return state.replace(params=model_params(state), adapters={
        "adapters": state.adapters, "frozen": lora_lib.frozen_kernels(state.params, state.adapters)})

  def from_checkpoint(stored):
    params = lora_lib.replace_leaves(stored.params, stored.adapters["frozen"])
    return stored.replace(params=params, adapters=stored.adapters["adapters"])

  return (jax.jit(model_params, in_shardings=(setup.state_shardings,),
                  out_shardings=setup.state_shardings.params),
          jax.jit(to_checkpoint, in_shardings=(setup.state_shardings,), out_shardings=checkpoint_shardings),
          jax.jit(from_checkpoint, in_shardings=(checkpoint_shardings,), out_shardings=setup.state_shardings))


@dataclasses.dataclass(frozen=True)
class Program:
  """A run's setup with its jitted functions (compiled on first call)."""

  setup: TrainSetup
  init_state: Callable[[int], TrainState]
  state_from_params: Callable[[Any], TrainState]
  train_step: Callable
  eval_step: Callable
  model_params: Callable[[TrainState], Any]  # the weights to evaluate (LoRA: merged)
  to_checkpoint: Callable[[TrainState], TrainState]
  from_checkpoint: Callable[[TrainState], TrainState]


# TrainConfig fields that only steer the loop around the steps; they do not change what
# is compiled, so runs differing only in them share a Program.
_LOOP_ONLY_FIELDS = ("log_every", "eval_every", "eval_batches", "eval_split", "checkpoint_every",
                     "keep_checkpoints", "async_checkpointing", "init_from", "tensorboard")


def build_program(exp: ExperimentConfig, devices=None) -> Program:
  """The Program for ``exp``, reused when the same process runs an equivalent experiment
  again (a resume in a notebook, a test), so its steps are not compiled twice."""
  defaults = type(exp.train)()
  ignored = _LOOP_ONLY_FIELDS
  if exp.train.lr_schedule == "constant":
    ignored += ("steps", "min_lr_ratio")  # a constant schedule does not read them
  train = dataclasses.replace(exp.train, **{f: getattr(defaults, f) for f in ignored})
  key = dataclasses.replace(exp, train=train, data=None)
  return _cached_program(key, None if devices is None else tuple(devices))


@functools.lru_cache(maxsize=4)
def _cached_program(exp: ExperimentConfig, devices) -> Program:
  setup = build_setup(exp, devices)
  model_params, to_checkpoint, from_checkpoint = make_checkpoint_conversions(setup)
  return Program(setup=setup, init_state=make_init(setup),
                 state_from_params=make_state_from_params(setup),
                 train_step=make_train_step(setup), eval_step=make_eval_step(setup),
                 model_params=model_params, to_checkpoint=to_checkpoint,
                 from_checkpoint=from_checkpoint)
