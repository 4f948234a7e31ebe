"""Training a neural potential on energies and forces, through the workbench's fitting loop.

:func:`train` minimizes ``energy_weight * mean((dE / N / s)^2) + force_weight * mean((dF /
s_F)^2)`` over mini-batches of configurations (a leading batch axis, ``vmap``; one compiled
program for every batch), with s_F the RMS reference force component and s = s_F x 0.1 nm.
It is :func:`workbench.gradients.fit.fit` underneath: optax (Adam with an exponentially
decaying learning rate by default), checkpoints and resume, a CSV log and a progress bar come
from there. Validation every ``eval_every`` steps keeps the best weights (early stopping after
``patience`` evaluations without improvement), written to ``best`` when given.

:func:`fit_shift_scale` sets the per-element energy shifts (least squares of the reference
energies on the element counts) and the energy scale (RMS force x 0.1 nm, as MACE scales by the
RMS force in eV/A) before training: the network then learns O(1) numbers.

Units: nm, kJ/mol, kJ/mol/nm.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .data import Dataset
from .model import Model

Array = jax.Array

__all__ = ["fit_shift_scale", "evaluate", "train", "TrainResult", "EnergyForceObjective",
           "LENGTH_SCALE"]

LENGTH_SCALE = 0.1
"""nm: energy scale = RMS force x this length (1 Angstrom, the scale MACE's eV/A implies)."""


def fit_shift_scale(model: Model, data: Dataset) -> Model:
    """``model`` with per-element shifts (kJ/mol) from a least-squares fit of the energies on
    the element counts (minimum-norm when the counts do not determine them, as for one
    molecule) and a scale of RMS force x :data:`LENGTH_SCALE` for every element."""
    species = model.species(data.atomic_numbers)
    counts = np.bincount(species, minlength=len(model.elements)).astype(float)
    shift, *_ = np.linalg.lstsq(np.tile(counts, (len(data), 1)), data.energies, rcond=None)
    rms = float(np.sqrt(np.mean(data.forces**2)))
    dtype = model.params["shift"].dtype
    params = dict(model.params, shift=jnp.asarray(shift, dtype),
                  scale=jnp.full(len(model.elements), rms * LENGTH_SCALE, dtype))
    return model.replace(params=params)


def _batched(model: Model, atomic_numbers):
    term = model.potential(atomic_numbers)

    def predict(params, r):
        ev = jax.vmap(lambda x: term.energy_forces(x, params, None))(r)
        return ev.energy, ev.forces

    return predict


_PREDICTORS: dict = {}


def _predictor(model: Model, atomic_numbers):
    """The jitted batch prediction for this model's structure and these atoms, made once (the
    validation in a training loop then compiles nothing new)."""
    z = tuple(int(a) for a in atomic_numbers)
    key = (id(model._static), z)
    hit = _PREDICTORS.get(key)
    if hit is None or hit[0] is not model._static:
        if len(_PREDICTORS) > 16:
            _PREDICTORS.clear()
        hit = _PREDICTORS[key] = (model._static, jax.jit(_batched(model, atomic_numbers)))
    return hit[1]


def evaluate(model: Model, data: Dataset, *, batch_size: int = 32) -> dict:
    """Errors of ``model`` on ``data``: energy_mae / energy_rmse (kJ/mol per configuration),
    force_mae / force_rmse (kJ/mol/nm, per component), force_mae_by_element {Z: kJ/mol/nm},
    and the predictions (energies (F,), forces (F, N, 3))."""
    predict = _predictor(model, data.atomic_numbers)
    n = len(data)
    b = min(batch_size, n)
    pad = (-n) % b
    r = np.concatenate([data.positions, data.positions[:pad]]) if pad else data.positions
    es, fs = [], []
    for i in range(0, len(r), b):
        e, f = predict(model.params, jnp.asarray(r[i:i + b]))
        es.append(np.asarray(e))
        fs.append(np.asarray(f))
    e, f = np.concatenate(es)[:n], np.concatenate(fs)[:n]
    de, df = e - data.energies, f - data.forces
    by_element = {int(z): float(np.mean(np.abs(df[:, data.atomic_numbers == z])))
                  for z in np.unique(data.atomic_numbers)}
    return dict(energy_mae=float(np.mean(np.abs(de))), energy_rmse=float(np.sqrt(np.mean(de**2))),
                force_mae=float(np.mean(np.abs(df))), force_rmse=float(np.sqrt(np.mean(df**2))),
                force_mae_by_element=by_element, energies=e, forces=f)


class EnergyForceObjective:
    """The training loss as a :func:`~workbench.gradients.fit.fit` objective over the weights
    (shift and scale held): each ``value_and_grad`` call takes the next mini-batch (a new
    permutation every epoch, from ``seed`` and the epoch: a resumed run sees the same batches).
    Metrics: the batch's energy and force MAE and the last validation figures."""

    def __init__(self, model: Model, data: Dataset, *, batch_size: int = 16,
                 energy_weight: float = 1.0, force_weight: float = 1.0, seed: int = 0,
                 step: int = 0):
        if not 1 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be in [1, {len(data)}], got {batch_size}")
        self.model, self.data, self.batch_size, self.seed, self.step = \
            model, data, int(batch_size), int(seed), int(step)
        self.validation = {"valid_energy_mae": float("nan"), "valid_force_mae": float("nan")}
        predict = _batched(model, data.atomic_numbers)
        fixed = {k: model.params[k] for k in ("shift", "scale")}
        s_f = float(np.sqrt(np.mean(data.forces**2)))
        s_e = s_f * LENGTH_SCALE
        n_atoms = data.n_atoms

        def loss(weights, r, e_ref, f_ref):
            e, f = predict(dict(fixed, weights=weights), r)
            de, df = (e - e_ref) / n_atoms / s_e, (f - f_ref) / s_f
            value = energy_weight * jnp.mean(de * de) + force_weight * jnp.mean(df * df)
            return value, {"energy_mae": jnp.mean(jnp.abs(e - e_ref)),
                           "force_mae": jnp.mean(jnp.abs(f - f_ref))}

        self._vg = jax.jit(jax.value_and_grad(loss, has_aux=True))
        self._per_epoch = len(data) // self.batch_size

    def batch(self, step: int) -> np.ndarray:
        """Frame indices of the mini-batch at optimizer step ``step``."""
        epoch, k = divmod(step, self._per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        return np.sort(order[k * self.batch_size:(k + 1) * self.batch_size])

    def value_and_grad(self, weights):
        i = self.batch(self.step)
        self.step += 1
        d = self.data
        (value, metrics), grads = self._vg(weights, jnp.asarray(d.positions[i]),
                                           jnp.asarray(d.energies[i]), jnp.asarray(d.forces[i]))
        return value, dict(metrics, **self.validation), grads


@dataclass
class TrainResult:
    """model: the best weights by validation force MAE (or the last, with no validation
    data); history: per evaluation "step", "valid_energy_mae", "valid_force_mae", and the
    fit loop's per-step history under "steps"; stopped_early: patience ran out;
    interrupted: stopped by the user (everything so far checkpointed)."""

    model: Model
    history: dict = field(default_factory=dict)
    steps: int = 0
    stopped_early: bool = False
    interrupted: bool = False


def _checkpoint_step(path: str | None) -> int:
    if not path or not os.path.exists(path):
        return 0
    with np.load(path, allow_pickle=False) as z:
        return int(json.loads(str(z["meta"]))["step"])


def train(model: Model, train_data: Dataset, valid_data: Dataset | None = None, *,
          steps: int = 1000, batch_size: int = 16, learning_rate: float = 3e-3,
          final_learning_rate: float = 3e-5, energy_weight: float = 1.0,
          force_weight: float = 1.0, eval_every: int | None = None, patience: int = 20,
          seed: int = 0, checkpoint: str | None = None, best: str | None = None,
          log: str | None = None, progress: bool = True,
          callback: Callable[[int, Model, dict], bool | None] | None = None) -> TrainResult:
    """Train ``model`` (its shift and scale as they are: see :func:`fit_shift_scale`).

    steps: optimizer steps in all (a resumed run continues up to it); learning rate decays
    exponentially from ``learning_rate`` to ``final_learning_rate``; eval_every: steps between
    validations (default: one epoch); patience: validations without improvement before
    stopping; checkpoint: fit's .npz checkpoint (resumed when present), with the validation
    state beside it (``<checkpoint>.json``); best: path the best model is saved to at every
    improvement; log: CSV, one row per step; callback(step, model, validation): return True to
    stop (the panel's stop button)."""
    import optax

    from ..gradients.fit import fit

    start = _checkpoint_step(checkpoint)
    objective = EnergyForceObjective(model, train_data, batch_size=batch_size,
                                     energy_weight=energy_weight, force_weight=force_weight,
                                     seed=seed, step=start)
    every = eval_every or max(1, len(train_data) // batch_size)
    state = {"best_mae": float("inf"), "since": 0, "best_step": -1,
             "history": {"step": [], "valid_energy_mae": [], "valid_force_mae": []}}
    side = f"{checkpoint}.json" if checkpoint else None
    if side and start and os.path.exists(side):
        with open(side) as fh:
            state = json.load(fh)
    best_model = [Model.load(best) if best and start and os.path.exists(best) else model]
    stopped = [False]

    def on_step(step, weights, loss, metrics):
        current = model.replace(params=dict(model.params, weights=weights))
        info = {"loss": float(loss), "energy_mae": float(metrics["energy_mae"]),
                "force_mae": float(metrics["force_mae"])}
        if valid_data is None or step % every and step != steps:
            return callback(step, current, info) if callback else None
        v = evaluate(current, valid_data)
        objective.validation = {"valid_energy_mae": v["energy_mae"],
                                "valid_force_mae": v["force_mae"]}
        h = state["history"]
        h["step"].append(step)
        h["valid_energy_mae"].append(v["energy_mae"])
        h["valid_force_mae"].append(v["force_mae"])
        if v["force_mae"] < state["best_mae"]:
            state.update(best_mae=v["force_mae"], since=0, best_step=step)
            best_model[0] = current
            if best:
                current.save(best)
        else:
            state["since"] += 1
        if side:
            with open(side, "w") as fh:
                json.dump(state, fh)
        if state["since"] >= patience:
            stopped[0] = True
            return True
        return callback(step, current, dict(info, valid=v)) if callback else None

    schedule = optax.exponential_decay(learning_rate, max(steps, 1),
                                       final_learning_rate / learning_rate)
    result = fit(objective, model.params["weights"], steps=steps,
                 optimizer=optax.adam(schedule), checkpoint=checkpoint, progress=progress,
                 log=log, callback=on_step)
    final = best_model[0] if valid_data is not None else \
        model.replace(params=dict(model.params, weights=result.params))
    history = dict(state["history"], steps=result.history)
    return TrainResult(final, history, result.steps, stopped[0],
                       result.interrupted and not stopped[0])
