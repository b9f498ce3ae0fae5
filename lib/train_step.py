"""Training state, losses and the per-device training step.

The step is written for one device's shard of the global batch and reduces across the
``"batch"`` axis (docs/DESIGN.md: pmap style, wrapped by ``jax.shard_map`` or ``jax.pmap`` in
lib/parallel.py). Losses are normalised by *global* denominators (``psum`` of weights)
and gradients are ``psum``-ed, so a sharded step equals the single-device step on the
same global batch, also with class weights; BatchNorm statistics are cross-replica.

Multi-task loss of the breast-ultrasound study: class-weighted cross-entropy on the
label plus, for images with a lesion mask, weighted binary cross-entropy and soft Dice
(Milletari et al. 2016) on the mask logits.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import struct

from lib import adversarial

AXIS = "batch"


class TrainState(struct.PyTreeNode):
  """Everything a run needs to continue: saved whole in every checkpoint."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, variables, tx, rng):
    params = variables["params"]
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
               rng=rng, tx=tx)

  @property
  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to zero over the whole run."""
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
  if warmup <= 0:
    return optax.cosine_decay_schedule(config.learning_rate, total)
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup_steps=warmup, decay_steps=total, end_value=0.0)


STAGE_ALIASES = {"stem": ("stem_conv", "stem_bn")}
OPTIONAL_MODULES = ("decoder",)  # may be named although the model has none (seg_head=False)


def module_trainable(name: str, trainable) -> bool:
  """Whether top-level module ``name`` (``stem_conv``, ``stage2``, ``fc``, ``decoder``...)
  is among ``trainable`` (names or aliases: ``stem`` = ``stem_conv`` + ``stem_bn``)."""
  names = {n for t in trainable for n in STAGE_ALIASES.get(t, (t,))}
  return name in names


def trainable_labels(params, trainable) -> Any:
  """optax labels: ``"train"`` for parameters of the ``trainable`` modules, else ``"frozen"``."""
  unknown = set(trainable) - set(params) - set(STAGE_ALIASES) - set(OPTIONAL_MODULES)
  if unknown:
    raise ValueError(f"trainable names {sorted(unknown)} are not modules of the model; "
                     f"its modules are {sorted(params)} (and 'stem').")
  return {k: jax.tree_util.tree_map(lambda _: "train" if module_trainable(k, trainable) else "frozen", v)
          for k, v in params.items()}


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW or SGD with the warm-up + cosine schedule; with ``config.trainable`` only those
  modules are updated (the others get zero updates, weight decay included), the optax
  mask used to robustify only the first stages or to fine-tune only the last ones."""
  opt = _base_optimizer(config, steps_per_epoch)
  trainable = tuple(config.get("trainable", ()) or ())
  if trainable:
    opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()},
                                functools.partial(trainable_labels, trainable=trainable))
  return opt


def _base_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    opt = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(lr, momentum=config.momentum, nesterov=True))
  else:
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; use 'adamw' or 'sgd'.")
  if config.get("grad_clip"):
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)
  return opt


# ----------------------------------------------------------------------------- losses


def class_weight_vector(config, train_labels, num_classes: int) -> jnp.ndarray:
  """Per-class loss weights: ``"balanced"`` (n / (k n_c), as sklearn), a list, or ones."""
  cw = config.loss.class_weights
  if cw in (None, "", "none"):
    return jnp.ones((num_classes,), jnp.float32)
  if cw == "balanced":
    counts = jnp.bincount(jnp.asarray(train_labels), length=num_classes).astype(jnp.float32)
    return counts.sum() / (num_classes * jnp.maximum(counts, 1.0))
  w = jnp.asarray(list(cw), jnp.float32)
  if w.shape != (num_classes,):
    raise ValueError(f"loss.class_weights has {w.shape[0]} entries for {num_classes} classes.")
  return w


def weighted_cross_entropy(logits, labels, weights):
  """Per-example cross-entropy and its weights (class weight x example weight)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce * weights, weights


def mask_losses(mask_logits, masks, has_mask, pos_weight: float):
  """Per-image weighted BCE (mean over pixels) and soft Dice loss."""
  log_p = jax.nn.log_sigmoid(mask_logits)
  log_not_p = jax.nn.log_sigmoid(-mask_logits)
  bce = -(pos_weight * masks * log_p + (1.0 - masks) * log_not_p).mean(axis=(1, 2))
  p = jax.nn.sigmoid(mask_logits)
  inter = (p * masks).sum(axis=(1, 2))
  dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(axis=(1, 2)) + masks.sum(axis=(1, 2)) + 1.0)
  return bce * has_mask, dice * has_mask


def _global_sum(x, axis_name):
  return jax.lax.psum(x, axis_name) if axis_name else x


def multitask_loss(logits, mask_logits, batch, class_weights, loss_config, axis_name=AXIS):
  """CE (+ mask BCE + Dice when ``mask_logits`` is given), normalised globally.

  Returns ``(loss, aux)``; ``loss`` is this shard's share so that the ``psum`` of the
  shards' losses (and gradients) is the global loss (and gradient).
  """
  w = class_weights[batch["label"]] * batch.get("weight", jnp.ones_like(batch["has_mask"]))
  ce_sum, w_sum = weighted_cross_entropy(logits, batch["label"], w)
  denom = jnp.maximum(_global_sum(w_sum.sum(), axis_name), 1e-8)
  ce = ce_sum.sum() / denom
  loss = ce
  aux = {"ce": ce}
  if mask_logits is not None:
    bce, dice = mask_losses(mask_logits, batch["mask"], batch["has_mask"], loss_config.bce_pos_weight)
    n_mask = jnp.maximum(_global_sum(batch["has_mask"].sum(), axis_name), 1.0)
    bce, dice = bce.sum() / n_mask, dice.sum() / n_mask
    loss = loss + loss_config.mask_weight * (bce + loss_config.dice_weight * dice)
    aux.update(bce=bce, dice_loss=dice)
  return loss, aux


# ----------------------------------------------------------------------------- the step


def train_step(state: TrainState, batch, *, model, class_weights, loss_config, adv_config=None,
               steps_per_epoch: int = 1, trainable=(), axis_name: str = AXIS):
  """One optimisation step on this device's shard (call inside shard_map or pmap).

  Gradients and metrics are summed over ``axis_name``. A non-finite loss or gradient
  leaves parameters, BatchNorm statistics and optimiser state unchanged, and the
  returned ``finite`` flag tells the host loop to stop (lib/trainer.py).

  ``adv_config`` (``config.adv``) selects adversarial training (lib/adversarial.py): the
  shard's examples are attacked here, on this device, with the current weights.
  ``trainable``: top-level modules whose BatchNorm statistics may change (the optimiser
  already leaves the others' parameters alone, :func:`make_optimizer`); empty = all.
  """
  method = adv_config.method if adv_config is not None else "none"
  x, b = batch["image"], batch["label"].shape[0]
  n_adv, x_adv = 0, None
  if method != "none":
    keys = adversarial.example_keys(jax.random.fold_in(state.rng, state.step), b, axis_name)
    eps = adversarial.epsilon_at(adv_config, state.step, steps_per_epoch)
    n_adv = adversarial.num_adversarial(adv_config, b)
    logits_fn = adversarial.attack_logits_fn(model, state.variables, adv_config.bn_mode)
    x_adv = adversarial.adversarial_examples(logits_fn, x[:n_adv], batch["label"][:n_adv],
                                             adv_config, eps, keys[:n_adv])
  inputs = adversarial.training_inputs(method, x, x_adv, model.seg_head)

  def loss_fn(params):
    (logits, mask_logits), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, inputs, train=True,
        mutable=["batch_stats"])
    out = adversarial.split_outputs(method, logits, mask_logits, b, n_adv)
    loss, aux = multitask_loss(out["class"], out["mask"],
                               dict(batch, has_mask=batch["has_mask"] * out["mask_weight"]),
                               class_weights, loss_config, axis_name)
    if method == "trades":
      aux["trades_kl"] = adversarial.trades_term(out["class"], out["adv"], b, axis_name)
      loss = loss + adv_config.trades_beta * aux["trades_kl"]
    return loss, (aux, out["class"], new_vars["batch_stats"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (aux, logits, batch_stats)), grads = grad_fn(state.params)
  if trainable:
    batch_stats = {k: v if module_trainable(k, trainable) else state.batch_stats[k]
                   for k, v in batch_stats.items()}
  grads = jax.lax.psum(grads, axis_name)
  loss = jax.lax.psum(loss, axis_name)
  aux = jax.lax.psum(aux, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = (jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
            & jnp.isfinite(optax.global_norm(updates)))
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            batch_stats=keep(batch_stats, state.batch_stats),
                            opt_state=keep(opt_state, state.opt_state))
  correct = jax.lax.psum((jnp.argmax(logits, -1) == batch["label"]).sum(), axis_name)
  count = jax.lax.psum(batch["label"].shape[0], axis_name)
  metrics = {"loss": loss, "accuracy": correct / count, "finite": finite,
             "grad_norm": optax.global_norm(grads), **aux}
  return new_state, metrics


def eval_step(variables, batch, *, model):
  """Class probabilities and mask probabilities (or None) in eval mode."""
  logits, mask_logits = model.apply(variables, batch["image"], train=False)
  probs = jax.nn.softmax(logits, -1)
  return probs, (None if mask_logits is None else jax.nn.sigmoid(mask_logits))


def state_to_dict(state: TrainState) -> dict:
  """The checkpointed part of a state as nested dicts (optax namedtuples included)."""
  return flax.serialization.to_state_dict(state)


def state_from_dict(template: TrainState, tree: dict) -> TrainState:
  return flax.serialization.from_state_dict(template, tree)
