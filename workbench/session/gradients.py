"""Live gradients for a session: the plain-Python controller behind the gradient panel.

A :class:`GradientSession` holds one or more *objectives* of the session's parameters, one per
method (e.g. "reweight": an :class:`~workbench.gradients.fit.EnsembleObjective`; "backprop": a
loss through a short trajectory; "implicit": a loss at a minimized structure), in the
protocol of :func:`workbench.gradients.fit.fit`: a loss function, or an object with
``value_and_grad(params)`` and optionally ``prepare(params)``. It

* recomputes the gradient of the selected method whenever the session's parameters change (a
  slider, ``set_params``) or the method changes, in its own worker thread: the kernel stays
  responsive, and a burst of changes costs one computation (the newest request wins);
* takes optimizer steps (optax; one with :meth:`step`, continuously with :meth:`run` until
  :meth:`stop`), writing each new parameter value back to the session, so the sliders follow
  and the simulation continues with it;
* keeps the loss history and tells observers (``"gradient"``, ``"loss"``, ``"status"``).

No widget library is imported here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import params as pn
from .observers import Observers

__all__ = ["GradientSession", "GradientResult", "GRADIENT_EVENTS"]

GRADIENT_EVENTS = ("gradient", "loss", "status")
_log = logging.getLogger("workbench.session.gradients")


@dataclass(frozen=True)
class GradientResult:
    """method; loss (float); gradient: {flat name: float} for every scalar parameter;
    metrics: scalars the objective reported (ess, ess_fraction, ...); seconds: wall time;
    resampled: whether the objective drew new samples first; params: the flat values used."""

    method: str
    loss: float
    gradient: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resampled: bool = False
    params: dict[str, float] = field(default_factory=dict)


class GradientSession:
    """Gradients of ``objectives`` ({method: objective}) that follow ``session``'s parameters.

    optimizer: optax transformation for :meth:`step` / :meth:`run` (default adam(1e-2));
    trainable: flat names (``epsilon``, ``PeriodicTorsionForce.k[4]``) the optimizer may move
    (default: all); names: the flat names whose derivatives are reported (default: the
    trainable ones, else all); auto: recompute on every parameter change."""

    def __init__(self, session, objectives: dict[str, Any], *, optimizer=None,
                 trainable=None, names=None, auto: bool = True):
        import optax

        if not objectives:
            raise ValueError("GradientSession needs at least one objective ({method: objective})")
        self.session = session
        from ..gradients.fit import as_objective

        self.objectives = {k: as_objective(v) for k, v in objectives.items()}
        self.method = next(iter(self.objectives))
        self._leaves = pn.describe(session.params)
        all_names = [n for leaf in self._leaves for n in leaf.names]
        self.trainable = list(trainable) if trainable is not None else None
        for n in self.trainable or []:
            if n not in all_names:
                raise KeyError(f"trainable {n!r} is not a parameter of the session; names look "
                               f"like {all_names[:5]}")
        self.names = list(names) if names is not None else (self.trainable or all_names)
        self._mask = self._make_mask()
        self.optimizer = optimizer if optimizer is not None else optax.adam(1e-2)
        self._opt_state = self.optimizer.init(session.params)
        self._update = jax.jit(lambda g, s, p: self.optimizer.update(g, s, p))
        self.history: list[tuple[int, float, str]] = []  # (optimizer step, loss, method)
        self.n_steps = 0
        self.last: GradientResult | None = None
        self.status = "idle"
        self.error: BaseException | None = None
        self._observers = Observers(GRADIENT_EVENTS, _log)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._want_gradient = False
        self._steps_wanted = 0
        self._running = False
        self._closed = False
        self._pushing = False  # set while this controller writes params to the session
        self._thread = threading.Thread(target=self._loop, name="workbench-gradients",
                                        daemon=True)
        self._thread.start()
        self._unsubscribe = session.observe(self._on_params, "params") if auto else None
        if auto:
            self.request()

    # ------------------------------------------------------------------ observers
    def observe(self, callback: Callable[[Any], None], event: str = "gradient"):
        """Call ``callback(payload)`` on ``event`` (:data:`GRADIENT_EVENTS`); returns a remover."""
        return self._observers.add(callback, event)

    def _notify(self, event: str, payload) -> None:
        self._observers.notify(event, payload)

    def _set_status(self, status: str) -> None:
        self.status = status
        self._notify("status", status)

    # ------------------------------------------------------------------ requests
    def _on_params(self, _values) -> None:
        if not self._pushing:
            self.request()

    def request(self) -> None:
        """Recompute the gradient at the session's next parameters (soon, in the worker)."""
        with self._lock:
            self._want_gradient = True
            self._idle.clear()
        self._wake.set()

    def set_method(self, method: str) -> None:
        """Switch the method (one of the objectives' keys) and recompute."""
        if method not in self.objectives:
            raise ValueError(f"unknown method {method!r}; choose one of {list(self.objectives)}")
        self.method = method
        self.request()

    def step(self, n: int = 1) -> None:
        """Take ``n`` optimizer steps (in the worker; returns at once)."""
        with self._lock:
            self._steps_wanted += int(n)
            self._idle.clear()
        self._wake.set()

    def run(self) -> None:
        """Keep taking optimizer steps until :meth:`stop`."""
        with self._lock:
            self._running = True
            self._idle.clear()
        self._wake.set()

    def stop(self) -> None:
        """Stop after the step in progress (and forget steps not yet taken)."""
        with self._lock:
            self._running = False
            self._steps_wanted = 0

    @property
    def running(self) -> bool:
        return self._running or self._steps_wanted > 0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has nothing left to do (False on timeout)."""
        return self._idle.wait(timeout)

    # ------------------------------------------------------------------ worker
    def _make_mask(self):
        if self.trainable is None:
            return None
        values = {n: 0.0 for leaf in self._leaves for n in leaf.names}
        values.update({n: 1.0 for n in self.trainable})
        return pn.with_values(self._leaves, jax.tree_util.tree_map(jnp.zeros_like,
                                                                   self.session.params), values)

    def _evaluate(self, params, method: str):
        obj = self.objectives[method]
        t0 = time.perf_counter()
        prepare = getattr(obj, "prepare", None)
        resampled = bool(prepare(params)) if prepare is not None else False
        loss, metrics, grads = obj.value_and_grad(params)
        resampled = resampled or bool(float(dict(metrics).get("resampled", 0.0)))
        grads = jax.block_until_ready(grads)
        flat = pn.flat_values(self._leaves, grads)
        result = GradientResult(
            method=method, loss=float(loss), gradient={n: flat[n] for n in self.names},
            metrics={k: float(np.asarray(v)) for k, v in dict(metrics).items()
                     if np.asarray(v).size == 1},
            seconds=time.perf_counter() - t0, resampled=resampled,
            params=pn.flat_values(self._leaves, params))
        return result, grads

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    do_step = self._running or self._steps_wanted > 0
                    do_grad = self._want_gradient
                    if do_step:
                        self._steps_wanted = max(self._steps_wanted - 1, 0)
                    self._want_gradient = False
                if not (do_step or do_grad):
                    break
                try:
                    self._set_status("stepping" if do_step else "computing")
                    self._work(do_step)
                except Exception as exc:  # noqa: BLE001 - shown by the panel, not raised
                    self.error = exc
                    with self._lock:
                        self._running, self._steps_wanted = False, 0
                    _log.exception("gradient computation failed")
                    self._set_status("error")
            if not self._closed and self.status != "error":
                self._set_status("idle")
            with self._lock:
                if not (self._want_gradient or self._running or self._steps_wanted):
                    self._idle.set()

    def _work(self, do_step: bool) -> None:
        params = self.session.next_params
        result, grads = self._evaluate(params, self.method)
        self.error = None
        self.last = result
        self._notify("gradient", result)
        if not do_step:
            return
        import optax

        if self._mask is not None:
            grads = jax.tree_util.tree_map(jnp.multiply, grads, self._mask)
        updates, self._opt_state = self._update(grads, self._opt_state, params)
        new = optax.apply_updates(params, updates)
        self.n_steps += 1
        self.history.append((self.n_steps, result.loss, result.method))
        self._notify("loss", self.history[-1])
        self._pushing = True
        try:
            self.session.set_params(new)
        finally:
            self._pushing = False
        with self._lock:  # the last step of a batch: show the gradient where the sliders are
            if not (self._running or self._steps_wanted):
                self._want_gradient = True

    def close(self) -> None:
        """Stop the worker and detach from the session."""
        self.stop()
        self._closed = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10.0)
