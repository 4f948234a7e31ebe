"""The live gradient panel: d(objective)/d(parameter) as a bar chart that follows the sliders,
the loss curve of the fit, and controls to take one optimizer step or keep fitting.

Data path: a :class:`~workbench.session.gradients.GradientSession` recomputes the gradient in
its worker thread whenever the session's parameters change; its events poke a
:class:`~workbench.panels.runner.LiveUpdater`, which redraws (matplotlib Agg into an
``ipywidgets.Image``) at most ``plot_rate`` times per second. Buttons only queue work for the
worker, so the kernel stays responsive while gradients compute.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets
import numpy as np

from .runner import LiveUpdater, button

__all__ = ["GradientPanel", "GradientFigure"]


class GradientFigure:
    """Two axes: horizontal bars of the gradient (one per parameter) and the loss curve."""

    def __init__(self, width_px: int = 720, height_px: int = 300, dpi: int = 80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        self.ax_g, self.ax_l = self.fig.subplots(1, 2, width_ratios=[3, 2])
        for ax in (self.ax_g, self.ax_l):
            ax.tick_params(labelsize=7)

    def update(self, labels: list[str], values: np.ndarray, losses: np.ndarray,
               title: str = "") -> bytes:
        """Redraw bars ``values`` named ``labels`` and the ``losses`` curve; returns a PNG."""
        ax = self.ax_g
        ax.clear()
        y = np.arange(len(labels))
        colors = ["C3" if v < 0 else "C0" for v in values]
        ax.barh(y, values, color=colors)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_xlabel("d(loss) / d(parameter)", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax = self.ax_l
        ax.clear()
        if len(losses):
            ax.plot(np.arange(1, len(losses) + 1), losses, "o-", ms=3, lw=1)
            if np.all(losses > 0):
                ax.set_yscale("log")
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.set_title("loss", fontsize=8)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class GradientPanel(widgets.VBox):
    """Live gradient of a :class:`~workbench.session.gradients.GradientSession`.

    labels: {flat name: label} for the bars (e.g. force-field type names); plot_rate: redraws
    per second. The method dropdown switches between the controller's objectives; "step" takes
    one optimizer step, "run" keeps fitting until "stop"."""

    def __init__(self, gradients, *, labels: dict | None = None, plot_rate: float = 4.0,
                 width_px: int = 720):
        self.gradients = gradients
        self.labels = dict(labels or {})
        self._figure = GradientFigure(width_px=width_px)
        self.method = widgets.Dropdown(options=list(gradients.objectives),
                                       value=gradients.method, description="method",
                                       layout=widgets.Layout(width="220px"))
        self.method.add_class("wb-gradient-method")
        self.step_button = button("step", "step-forward", "wb-gradient-step")
        self.run_button = button("run", "play", "wb-gradient-run")
        self.stop_button = button("stop", "stop", "wb-gradient-stop")
        self.label = widgets.HTML()
        self.label.add_class("wb-gradient-label")
        self.message = widgets.HTML()
        self.message.add_class("wb-gradient-message")
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width=f"{width_px}px"))
        self.plot.add_class("wb-gradient-plot")
        controls = widgets.HBox([self.method, self.step_button, self.run_button,
                                 self.stop_button])
        super().__init__([widgets.HTML("<b>Gradients</b>"), controls, self.label, self.plot,
                          self.message])
        self.add_class("wb-gradient-panel")
        self.method.observe(self._on_method, "value")
        self.step_button.on_click(lambda _: self.gradients.step())
        self.run_button.on_click(lambda _: self.gradients.run())
        self.stop_button.on_click(lambda _: self.gradients.stop())
        self._updater = LiveUpdater(self._refresh, rate=plot_rate, name="gradients")
        self._unsubscribe = [gradients.observe(lambda _: self._updater.poke(), e)
                             for e in ("gradient", "loss", "status")]
        self._updater.poke()

    def _on_method(self, change) -> None:
        self.gradients.set_method(change["new"])

    def _refresh(self) -> None:
        g = self.gradients
        r = g.last
        status = html.escape(g.status)
        if g.error is not None and g.status == "error":
            kind = html.escape(type(g.error).__name__)
            self.message.value = (f'<span style="color:#b00020">{kind}: '
                                  f"{html.escape(str(g.error))}</span>")
        else:
            self.message.value = ""
        if r is None:
            self.label.value = f'<span class="wb-gradient-status">{status}</span>'
            return
        extra = []
        if "ess_fraction" in r.metrics:
            extra.append(f'<span class="wb-gradient-ess">ESS {r.metrics.get("ess", 0):.0f} '
                         f'({100 * r.metrics["ess_fraction"]:.0f}%)</span>')
        if r.resampled:
            extra.append("re-sampled")
        parts = [f'<span class="wb-gradient-status">{status}</span>',
                 f'<span class="wb-gradient-method-used">{html.escape(r.method)}</span>',
                 f'<span class="wb-gradient-loss">loss {_fmt(r.loss)}</span>',
                 f'<span class="wb-gradient-steps">steps: {g.n_steps}</span>',
                 f'<span class="wb-gradient-seconds">{r.seconds:.2f} s</span>', *extra]
        self.label.value = " &middot; ".join(parts)
        names = list(r.gradient)
        values = np.array([r.gradient[n] for n in names])
        labels = [self.labels.get(n, n) for n in names]
        losses = np.array([h[1] for h in g.history])
        self.plot.value = self._figure.update(labels, values, losses,
                                              f"{r.method}, loss {_fmt(r.loss)}")

    def refresh(self, timeout: float | None = None) -> None:
        """Wait for the gradient work queued so far, then redraw now."""
        self.gradients.wait(timeout)
        self._updater.wait_idle(timeout)
        self._updater.refresh_now()

    def close(self) -> None:
        """Detach from the controller and close the widgets."""
        for off in getattr(self, "_unsubscribe", ()):
            off()
        if getattr(self, "_updater", None) is not None:
            self._updater.close()
        super().close()
