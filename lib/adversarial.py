"""Adversarial training: examples made inside the per-device step, and their losses.

Methods (``config.adv.method``):
  * ``"pgd"``: PGD adversarial training (Madry et al. 2018): every step trains on PGD
    examples (random start, ``steps`` signed-gradient steps of ``step_size_factor * eps``,
    last iterate) of the current weights.
  * ``"iterative"``: the oncology study's iterative adversarial training: a share
    ``mix_ratio`` of each batch is replaced by PGD examples (the rest stays clean) and
    eps ramps up linearly from 0 over ``ramp_epochs``.
  * ``"fgsm_rs"``: FGSM from a uniform random start with step 1.25 eps ("Fast is better
    than free", Wong et al. 2020); prone to catastrophic overfitting, which the trainer
    watches for (PGD accuracy on a held-out batch every epoch).
  * ``"trades"``: TRADES (Zhang et al. 2019): CE on clean images + ``trades_beta`` x
    KL(p(x) || p(x')), x' maximising that KL (random start, ``steps`` steps).

Everything runs inside the data-parallel step on the device's own shard: the attack is
a few more forward/backward passes of the same compiled model (no host round trip), so
a step with k attack steps costs about k + 1 standard steps. The attack sees the current
weights as constants (``stop_gradient``). BatchNorm during the attack: ``bn_mode="eval"``
(default) uses the running statistics, so each example's attack is independent of the
rest of the batch; ``"train"`` uses the batch statistics as the training forward pass
does (cross-replica, so the attack couples the examples of the global batch). Robust
accuracy differs between the two; report which was used.

With a segmentation head, the mask loss is always taken on clean images (the decoder
learns the lesion, not the perturbation): for ``pgd``/``fgsm_rs`` the clean batch goes
through the same forward pass beside the adversarial one (one extra pass), for
``trades`` it is already there, for ``iterative`` only the clean part of the mixed
batch contributes to it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lib import attacks

METHODS = ("none", "pgd", "iterative", "fgsm_rs", "trades")
BN_MODES = ("eval", "train")


def check_config(adv) -> None:
  if adv.method not in METHODS:
    raise ValueError(f"adv.method must be one of {METHODS}, got {adv.method!r}")
  if adv.bn_mode not in BN_MODES:
    raise ValueError(f"adv.bn_mode must be one of {BN_MODES}, got {adv.bn_mode!r}")
  if not 0.0 < adv.mix_ratio <= 1.0:
    raise ValueError(f"adv.mix_ratio must be in (0, 1], got {adv.mix_ratio}")


def epsilon_at(adv, step, steps_per_epoch: int):
  """The training eps at ``step`` (traced): constant, or for ``iterative`` (and any method
  with ``ramp_epochs > 0``) a linear ramp from 0 to ``eps`` over ``ramp_epochs``."""
  if adv.ramp_epochs <= 0:
    return jnp.float32(adv.eps)
  ramp = jnp.asarray(step, jnp.float32) / (adv.ramp_epochs * steps_per_epoch)
  return jnp.float32(adv.eps) * jnp.clip(ramp, 0.0, 1.0)


def attack_logits_fn(model, variables, bn_mode: str):
  """``x -> logits`` of the current weights (held constant) for generating examples."""
  variables = jax.lax.stop_gradient(variables)
  if bn_mode == "eval":
    return lambda x: model.apply(variables, x, method=type(model).logits)
  return lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0][0]


def example_keys(key, local_batch: int, axis_name):
  """One PRNG key per example, from its index in the *global* batch, so the random starts
  (and so the whole step) do not depend on how the batch is split over devices."""
  first = jax.lax.axis_index(axis_name) * local_batch if axis_name else 0
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(local_batch))


def adversarial_examples(logits_fn, x, y, adv, eps, keys):
  """The training examples of ``adv.method`` for clean images ``x`` with labels ``y``;
  ``keys``: one PRNG key per example for the random start (:func:`example_keys`)."""
  step_size = adv.step_size_factor * eps
  if adv.method in ("pgd", "iterative"):
    objective = attacks.class_objective(logits_fn, y)
    steps, random_init = adv.steps, adv.random_start
  elif adv.method == "fgsm_rs":
    objective, steps, random_init = attacks.class_objective(logits_fn, y), 1, True
    step_size = 1.25 * eps
  elif adv.method == "trades":
    p_clean = jax.lax.stop_gradient(jax.nn.softmax(logits_fn(x), -1))
    objective = attacks.loss_objective(lambda xa: kl_divergence(p_clean, logits_fn(xa)))
    steps, random_init = adv.steps, True
  else:
    raise ValueError(f"No adversarial examples for method {adv.method!r}")
  x_init = None
  if random_init:
    noise = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.0, 1.0))(keys)
    x_init = x + eps * noise
  x_adv = attacks.projected_gradient(objective, x, eps=eps, steps=steps,
                                     step=attacks.Step(size=step_size),
                                     start=attacks.Start(x_init=x_init), keep_best=False)
  return jax.lax.stop_gradient(x_adv)


def kl_divergence(p, logits):
  """Per-example KL(p || softmax(logits))."""
  log_q = jax.nn.log_softmax(logits, -1)
  return (p * (jnp.log(jnp.maximum(p, 1e-12)) - log_q)).sum(-1)


def num_adversarial(adv, local_batch: int) -> int:
  """How many of a shard's examples are attacked (static): all, or for ``iterative`` the
  first ``mix_ratio`` of each device's shard (the batches are shuffled, so which ones is
  random; unlike the other methods, the step then depends on the number of devices)."""
  if adv.method == "iterative":
    return max(1, int(round(adv.mix_ratio * local_batch)))
  return local_batch


def training_inputs(method: str, x, x_adv, seg_head: bool):
  """The images of the training forward pass (one concatenated batch)."""
  if method == "none":
    return x
  if method == "iterative":
    return jnp.concatenate([x_adv, x[x_adv.shape[0]:]])
  if method == "trades" or seg_head:
    return jnp.concatenate([x_adv, x])
  return x_adv


def split_outputs(method: str, logits, mask_logits, batch_size: int, n_adv: int) -> dict:
  """Splits the forward pass of :func:`training_inputs` into ``class`` (the logits the CE
  is taken on, aligned with the batch), ``adv`` (TRADES: logits of the adversarial
  images), ``mask`` (mask logits aligned with the batch) and ``mask_weight`` (which
  images count for the mask loss: the clean ones)."""
  out = {"class": logits, "adv": None, "mask": mask_logits,
         "mask_weight": jnp.ones((batch_size,), jnp.float32)}
  if method == "iterative":
    out["mask_weight"] = (jnp.arange(batch_size) >= n_adv).astype(jnp.float32)
  elif method != "none" and logits.shape[0] == 2 * batch_size:  # [adversarial, clean]
    adv, clean = logits[:batch_size], logits[batch_size:]
    out.update(mask=None if mask_logits is None else mask_logits[batch_size:],
               **({"class": clean, "adv": adv} if method == "trades" else {"class": adv}))
  return out


def trades_term(clean_logits, adv_logits, count, axis_name):
  """TRADES' robustness regulariser: mean over the global batch of KL(p(x) || p(x'))."""
  kl = kl_divergence(jax.nn.softmax(clean_logits, -1), adv_logits).sum()
  total = jax.lax.psum(count, axis_name) if axis_name else count
  return kl / total
