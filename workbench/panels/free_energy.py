"""The live free-energy panel: the free-energy surface of a metadynamics run growing as hills are
deposited (a 1-D curve or a 2-D map), the CV time series, and, for replica exchange, the
acceptance matrix.

Data path as the simulation panel's: the session's runner thread calls :meth:`_on_frames`, which
only evaluates the CVs of the new frames (one jitted ``vmap``) and marks the panel dirty; a
:class:`~workbench.panels.runner.LiveUpdater` thread redraws (matplotlib Agg into an
``ipywidgets.Image``) at most ``plot_rate`` times per second from the sampler's state, read from
the session (the bias lives in ``state.extra``, read through
:func:`~workbench.sampling.metadynamics.bias_state`).
"""

from __future__ import annotations

import io
import threading

import ipywidgets as widgets
import numpy as np

from .runner import LiveUpdater

__all__ = ["FreeEnergyPanel", "FreeEnergyFigure", "acceptance_figure"]


class FreeEnergyFigure:
    """Two axes: the free energy (curve in 1-D, filled contours in 2-D) and the CV time series
    (a path over the map in 2-D, CV against frame in 1-D)."""

    def __init__(self, dim: int, labels: list[str], width_px: int = 720, height_px: int = 330,
                 dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.dim, self.labels = dim, labels
        self.fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        self.ax_f, self.ax_s = self.fig.subplots(1, 2)
        for ax in (self.ax_f, self.ax_s):
            ax.tick_params(labelsize=7)
        self._colorbar = None

    def update(self, axes, f, cv_series: np.ndarray, reference=None, title: str = "",
               energy_unit: str = "kJ/mol", f_max: float | None = None) -> bytes:
        """Redraw from grid ``axes``, F on the grid, CV values (T, d) and an optional reference
        F on the same grid; returns a PNG."""
        ax = self.ax_f
        ax.clear()
        if self.dim == 1:
            ax.plot(axes[0], f, lw=1.5, label="estimate")
            if reference is not None:
                ax.plot(axes[0], reference - np.nanmin(reference), "k--", lw=1, label="exact")
                ax.legend(fontsize=7, frameon=False)
            ax.set_xlabel(self.labels[0])
            ax.set_ylabel(f"F ({energy_unit})")
            if f_max is not None:
                ax.set_ylim(-0.05 * f_max, f_max)
        else:
            top = f_max if f_max is not None else float(np.nanmax(f)) or 1.0
            levels = np.linspace(0.0, top, 16)
            cs = ax.contourf(axes[0], axes[1], np.minimum(f, top).T, levels=levels,
                             cmap="viridis")
            if self._colorbar is None:
                self._colorbar = self.fig.colorbar(cs, ax=ax, label=f"F ({energy_unit})")
            else:
                self._colorbar.update_normal(cs)
            ax.set_xlabel(self.labels[0])
            ax.set_ylabel(self.labels[1])
        ax.set_title(title, fontsize=8)
        ax = self.ax_s
        ax.clear()
        if len(cv_series):
            if self.dim == 1:
                ax.plot(np.arange(len(cv_series)), cv_series[:, 0], lw=0.8)
                ax.set_xlabel("frame")
                ax.set_ylabel(self.labels[0])
            else:
                ax.plot(cv_series[:, 0], cv_series[:, 1], ".", ms=2, alpha=0.5)
                ax.plot(cv_series[-1:, 0], cv_series[-1:, 1], "o", color="C3", ms=5)
                ax.set_xlim(axes[0][0], axes[0][-1])
                ax.set_ylim(axes[1][0], axes[1][-1])
                ax.set_xlabel(self.labels[0])
                ax.set_ylabel(self.labels[1])
        ax.set_title("CV path" if self.dim == 2 else "CV time series", fontsize=8)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


def acceptance_figure(stats, width_px: int = 320, dpi: int = 80) -> bytes:
    """PNG of a replica-exchange acceptance matrix (accepted swaps per attempt between slots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(stats.matrix, float)
    att = np.asarray(stats.attempts, float)
    n = m.shape[0]
    frac = np.zeros_like(m)
    for i in range(n - 1):
        if att[i] > 0:
            frac[i, i + 1] = frac[i + 1, i] = m[i, i + 1] / att[i]
    fig = Figure(figsize=(width_px / dpi, width_px / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(frac, vmin=0, vmax=1, cmap="magma")
    fig.colorbar(im, ax=ax, label="acceptance")
    ax.set(xlabel="slot", ylabel="slot", title="exchange acceptance")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class FreeEnergyPanel(widgets.VBox):
    """Live free energy of a session running a metadynamics sampler
    (:func:`workbench.sampling.metadynamics.metadynamics`).

    session: the :class:`~workbench.session.Session`; sampler: its Metadynamics (default: the
    session's integrator, or the metadynamics sampler nested inside it, e.g. under a
    barostat). reference: optional exact F on the sampler's grid (kJ/mol) drawn
    dashed (1-D). f_max: top of the colour / y scale (kJ/mol). plot_rate: redraws per second.
    ``exchange_stats``: optional callable returning :class:`ExchangeStats` to draw as well."""

    def __init__(self, session, sampler=None, *, reference=None, f_max: float | None = None,
                 plot_rate: float = 2.0, exchange_stats=None, width_px: int = 720):
        import jax

        from ..dynamics.integrators import layers
        from ..sampling import cv as cvs_mod
        from ..sampling.metadynamics import Metadynamics

        if sampler is None:  # the session's integrator, or the metadynamics nested inside it
            found = [s for s in layers(session.simulation.integrator)
                     if isinstance(s, Metadynamics)]
            sampler = found[0] if found else session.simulation.integrator
        if not isinstance(sampler, Metadynamics):
            raise TypeError("FreeEnergyPanel needs a metadynamics sampler: build the session with "
                            "integrator=workbench.sampling.metadynamics.metadynamics(...)")
        self.session, self.sampler = session, sampler
        cvs = self.sampler.bias.cvs
        self._cv_fn = jax.jit(jax.vmap(lambda r: cvs_mod.values(cvs, r)))
        self._series: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reference, self.f_max = reference, f_max
        labels = [f"{c.name} ({c.unit})" if c.unit else c.name for c in cvs]
        self._figure = FreeEnergyFigure(len(cvs), labels, width_px=width_px)
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width=f"{width_px}px"))
        self.plot.add_class("wb-free-energy")
        self.label = widgets.HTML()
        self.label.add_class("wb-free-energy-label")
        self._exchange_stats = exchange_stats
        children = [self.label, self.plot]
        self.exchange_plot = None
        if exchange_stats is not None:
            self.exchange_plot = widgets.Image(format="png",
                                               layout=widgets.Layout(width="320px"))
            children.append(self.exchange_plot)
        super().__init__(children)
        self.add_class("wb-free-energy-panel")
        self._updater = LiveUpdater(self._refresh, rate=plot_rate, name="free-energy")
        self._unsubscribe = [session.observe(self._on_frames, "frames"),
                             session.observe(self._on_status, "status")]
        self._updater.poke()

    @property
    def cv_series(self) -> np.ndarray:
        """(T, d) CV values of every frame seen so far."""
        with self._lock:
            return np.concatenate(self._series) if self._series else np.zeros((0, 1))

    def _on_frames(self, batch) -> None:
        values = np.asarray(self._cv_fn(np.asarray(batch.positions)))
        with self._lock:
            self._series.append(values)
        self._updater.poke()

    def _on_status(self, status: str) -> None:
        if status in ("rebuilt", "reset"):
            with self._lock:
                self._series.clear()
        self._updater.poke()

    def free_energy(self):
        """(grid axes, F) from the session's current bias (kJ/mol, minimum 0)."""
        from ..sampling.metadynamics import free_energy

        return free_energy(self.sampler, self.session.simulation.state)

    def _refresh(self) -> None:
        from ..sampling.metadynamics import bias_state

        meta = bias_state(self.session.simulation.state, self.sampler)
        axes, f = self.free_energy()
        hills = int(meta.n_hills)
        title = f"{hills} hills, bias factor {float(meta.bias_factor):g}"
        self.plot.value = self._figure.update(axes, f, self.cv_series, self.reference, title,
                                              f_max=self.f_max)
        self.label.value = (f"<b>free energy</b> from the metadynamics bias | hills: {hills} | "
                            f"bias factor {float(meta.bias_factor):g} | "
                            f"step {self.session.step:,}")
        if self.exchange_plot is not None:
            self.exchange_plot.value = acceptance_figure(self._exchange_stats())

    def refresh(self, timeout: float | None = None) -> None:
        """Bring the panel up to date now."""
        self._updater.wait_idle(timeout)
        self._updater.refresh_now()

    def close(self) -> None:
        """Detach from the session and close the widgets (safe after a failed construction:
        ipywidgets calls it from ``__del__``)."""
        for off in getattr(self, "_unsubscribe", ()):
            off()
        if getattr(self, "_updater", None) is not None:
            self._updater.close()
        super().close()
