"""The live training panel: energy and force errors as training goes, a parity plot of the
validation forces, per-element force errors, and train / stop buttons (stop writes a checkpoint;
train again resumes from it).

Data path: a :class:`~workbench.session.training.TrainingSession` trains in its worker thread
and reports every step; its events poke a :class:`~workbench.panels.runner.LiveUpdater`, which
redraws (matplotlib Agg into an ``ipywidgets.Image``) at most ``plot_rate`` times per second.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import numpy as np

from .runner import LiveUpdater, button

__all__ = ["TrainingPanel", "TrainingFigure"]

_SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 15: "P", 16: "S", 17: "Cl"}


class TrainingFigure:
    """Three axes: the error curves, the force parity plot, the per-element force errors."""

    def __init__(self, width_px: int = 900, height_px: int = 280, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        self.ax_curve, self.ax_parity, self.ax_element = self.fig.subplots(
            1, 3, width_ratios=[3, 2, 1.4])
        for ax in (self.ax_curve, self.ax_parity, self.ax_element):
            ax.tick_params(labelsize=7)

    def update(self, session) -> bytes:
        """Redraw from a training session's history; returns a PNG."""
        h, v = session.history, session.validation
        ax = self.ax_curve
        ax.clear()
        if h["step"]:
            ax.plot(h["step"], h["force_mae"], lw=0.6, color="C0", alpha=0.5,
                    label="batch force MAE")
        if v["step"]:
            ax.plot(v["step"], v["force_mae"], "o-", ms=3, color="C0", label="valid force MAE")
            ax2 = ax.twinx() if not hasattr(self, "_ax2") else self._ax2
            ax2.clear()  # (clearing a twin moves its axis to the left: put it back)
            ax2.yaxis.tick_right()
            ax2.yaxis.set_label_position("right")
            ax2.plot(v["step"], v["energy_mae"], "s-", ms=3, color="C1", label="valid energy MAE")
            ax2.set_ylabel("energy MAE (kJ/mol)", fontsize=8, color="C1")
            ax2.tick_params(labelsize=7)
            self._ax2 = ax2
        if h["step"] and np.all(np.asarray(h["force_mae"]) > 0):
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("force MAE (kJ/mol/nm)", fontsize=8)
        if h["step"]:
            ax.legend(fontsize=7, loc="upper right")
        ax = self.ax_parity
        ax.clear()
        ref, pred = session.parity()
        if ref.size:
            ax.plot(ref, pred, ".", ms=1.5, alpha=0.4)
            lim = float(np.abs(ref).max())
            ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set_xlabel("reference force (kJ/mol/nm)", fontsize=8)
        ax.set_ylabel("model force", fontsize=8)
        ax.set_title("validation", fontsize=8)
        ax = self.ax_element
        ax.clear()
        errors = session.force_errors_by_element()
        if errors:
            names = [_SYMBOLS.get(z, str(z)) for z in errors]
            ax.bar(names, list(errors.values()), color="C2")
        ax.set_ylabel("force MAE (kJ/mol/nm)", fontsize=8)
        ax.set_title("per element", fontsize=8)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


class TrainingPanel(widgets.VBox):
    """Live view and controls of a :class:`~workbench.session.training.TrainingSession`:
    "train" starts (or resumes) it, "stop" ends it after the current step with a checkpoint,
    and "MD" (with ``md_positions`` (N, 3) nm of the training molecule) runs Langevin dynamics
    at ``md_settings`` with the best model so far in a :class:`SimulationPanel` below."""

    def __init__(self, session, *, plot_rate: float = 2.0, width_px: int = 900,
                 md_positions=None, md_settings: dict | None = None):
        self.session = session
        self.md_positions = md_positions
        self.md_settings = dict(md_settings or dict(dt=0.0005, kT=2.494, gamma=1.0))
        self.md_session = None
        self.md_box = widgets.VBox()
        self.md_box.add_class("wb-train-md")
        self._figure = TrainingFigure(width_px=width_px)
        self.train_button = button("train", "play", "wb-train-start")
        self.stop_button = button("stop", "stop", "wb-train-stop")
        self.label = widgets.HTML()
        self.label.add_class("wb-train-label")
        self.message = widgets.HTML()
        self.message.add_class("wb-train-message")
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width=f"{width_px}px"))
        self.plot.add_class("wb-train-plot")
        self.md_button = button("MD", "play-circle", "wb-train-md-start",
                                disabled=md_positions is None,
                                tooltip="MD with the best model so far")
        super().__init__([widgets.HTML("<b>Training</b>"),
                          widgets.HBox([self.train_button, self.stop_button, self.md_button]),
                          self.label, self.plot, self.message, self.md_box])
        self.add_class("wb-train-panel")
        self.train_button.on_click(lambda _: self.session.start())
        self.stop_button.on_click(lambda _: self.session.stop(wait=False))
        self.md_button.on_click(lambda _: self.start_md())
        self._updater = LiveUpdater(self._refresh, rate=plot_rate, name="training")
        self._unsubscribe = [session.observe(lambda _: self._updater.poke(), e)
                             for e in ("step", "validation", "status")]
        self._updater.poke()

    def _refresh(self) -> None:
        s = self.session
        if s.status == "error" and s.error is not None:
            self.message.value = (f'<span style="color:#b00020">{html.escape(type(s.error).__name__)}'
                                  f": {html.escape(str(s.error))}</span>")
        else:
            self.message.value = ""
        parts = [f'<span class="wb-train-status">{html.escape(s.status)}</span>',
                 f'<span class="wb-train-steps">step {s.step} / {s.steps}</span>']
        if s.validation["step"]:
            parts.append(f'<span class="wb-train-valid">valid force MAE '
                         f'{s.validation["force_mae"][-1]:.1f} kJ/mol/nm, energy MAE '
                         f'{s.validation["energy_mae"][-1]:.2f} kJ/mol</span>')
            parts.append(f'best {min(s.validation["force_mae"]):.1f}')
        self.label.value = " &middot; ".join(parts)
        self.plot.value = self._figure.update(s)

    def start_md(self, chunks: int | None = None):
        """Run MD with the best model so far (replacing an earlier MD view); returns its
        :class:`~workbench.session.Session`."""
        from ..session import Session
        from .simulation import SimulationPanel

        if self.md_positions is None:
            raise ValueError("the panel was made without md_positions: nothing to simulate")
        self._stop_md()
        model = self.session.best
        system = model.system(self.session.train_data.atomic_numbers, self.md_positions)
        self.md_session = Session(system, "langevin", self.md_settings, report_interval=50,
                                  frames_per_chunk=4)
        self.md_box.children = [SimulationPanel(self.md_session)]
        self.md_session.start(chunks)
        return self.md_session

    def _stop_md(self) -> None:
        if self.md_session is not None:
            self.md_session.stop()
            for child in self.md_box.children:
                child.close()
            self.md_box.children = []
            self.md_session = None

    def refresh(self, timeout: float | None = None) -> None:
        """Wait for drawing queued so far, then redraw now."""
        self._updater.wait_idle(timeout)
        self._updater.refresh_now()

    def close(self) -> None:
        """Detach from the session, stop the MD view and close the widgets."""
        self._stop_md()
        for off in getattr(self, "_unsubscribe", ()):
            off()
        if getattr(self, "_updater", None) is not None:
            self._updater.close()
        super().close()
