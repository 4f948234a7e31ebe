"""Sliders for the numeric knobs of a session, generated from its parameter pytree.

One slider per scalar in the potential's parameters (``epsilon``, ``sigma``, ...; per-type
arrays give ``epsilon[0]``, ``epsilon[1]``, ...) and per integrator setting (``dt``, ``kT``,
``gamma`` or ``tau``), labelled with its unit. Moving a slider calls
:meth:`Session.set_params` / :meth:`Session.set_settings`: the value is stored as an array of
fixed dtype and shape and applied at the next chunk boundary, so nothing recompiles. The panel
shows the values the last chunk actually used and the compile count.
"""

from __future__ import annotations

import html
import math
import threading

import ipywidgets as widgets

from .runner import LiveUpdater

__all__ = ["ParameterPanel", "default_range", "MAX_AUTO_SLIDERS"]

MAX_AUTO_SLIDERS = 40
"""Without ``include``, a panel shows a slider per parameter only up to this many."""

# Ranges as multiples of the starting value, for names where a generic range misleads.
_RELATIVE_RANGES = {
    "epsilon": (0.1, 3.0), "sigma": (0.7, 1.3), "kT": (0.1, 3.0), "dt": (0.2, 2.0),
    "gamma": (0.05, 10.0), "tau": (0.1, 10.0),
}


def default_range(name: str, value: float) -> tuple[float, float, float]:
    """Slider (min, max, step) for a knob starting at ``value``: multiples of it, with a
    round step and both ends on the step grid, so the start value is exactly reachable (a
    browser slider snaps its value to the grid and would otherwise send a changed value)."""
    base = name.split("[")[0].split(".")[-1]
    lo, hi = _RELATIVE_RANGES.get(base, (0.2, 3.0))
    if value == 0:
        return -1.0, 1.0, 0.01
    step = 10.0 ** math.floor(math.log10(abs(value))) / 100.0
    a, b = sorted((lo * value, hi * value))
    return (_snap(math.floor(a / step) * step, step), _snap(math.ceil(b / step) * step, step),
            step)


def _snap(x: float, step: float) -> float:
    """Round ``x`` to the decimals of ``step`` (no 0.30000000000000004 ends)."""
    return round(x, max(0, -math.floor(math.log10(step))) + 2)


def _round(v: float) -> float:
    """A float32 value shown as the decimal it was set from (0.004999999888 -> 0.005)."""
    return float(f"{v:.6g}")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class ParameterPanel(widgets.VBox):
    """Sliders for ``session``'s parameters and integrator settings.

    ranges: ``{name: (min, max)}`` or ``(min, max, step)`` overriding :func:`default_range`. include: names to show
    (default: all; a force field has thousands: pick some, e.g. with
    ``ForceFieldSystem.find_types``). labels: ``{name: label}`` shown instead of the flat name
    (e.g. the force-field type). continuous_update: send values while dragging (True) or on
    release.
    """

    def __init__(self, session, *, ranges: dict | None = None, include=None,
                 labels: dict | None = None, continuous_update: bool = True, rate: float = 4.0,
                 **kwargs):
        self.session = session
        self.labels = dict(labels or {})
        self._slider_names: dict[str, str] = {}  # widget model id -> flat parameter name
        self.ranges = dict(ranges or {})
        self.include = None if include is None else set(include)
        self.continuous_update = continuous_update
        self.sliders: dict[str, widgets.FloatSlider] = {}
        self._groups: dict[str, str] = {}
        self._local = threading.local()  # marks changes this panel makes itself
        self._sync_needed = False
        self._lock = threading.RLock()
        self._rebuild_sliders = False
        self.title = widgets.HTML("<b>Parameters</b> <small>(numeric: no recompilation)</small>")
        self.slider_box = widgets.VBox()
        self.message = widgets.HTML()
        self.message.add_class("wb-param-message")
        self.applied = widgets.HTML()
        self.applied.add_class("wb-applied")
        self.pending = widgets.HTML()
        self.pending.add_class("wb-pending")
        self.compiles = widgets.HTML()
        self.compiles.add_class("wb-param-compiles")
        self._build_sliders()
        super().__init__([self.title, self.slider_box, self.message, self.pending,
                          self.applied, self.compiles],
                         layout=kwargs.pop("layout", widgets.Layout(width="340px")), **kwargs)
        self.add_class("wb-parameter-panel")
        self._updater = LiveUpdater(self._refresh, rate=rate, name="parameters")
        self._unsubscribe = [
            session.observe(lambda _: self._updater.poke(), "frames"),
            session.observe(self._on_status, "status"),
            session.observe(self._on_params, "params"),
        ]
        self._refresh()

    # ---------------------------------------------------------------- sliders
    def _build_sliders(self) -> None:
        rows = []
        self.sliders, self._groups, self._slider_names = {}, {}, {}
        specs = self.session.param_specs()
        n_params = sum(s.group == "params" for s in specs)
        too_many = self.include is None and n_params > MAX_AUTO_SLIDERS
        for spec in specs:
            if self.include is not None and spec.name not in self.include:
                continue
            if too_many and spec.group == "params":
                continue
            value = _round(spec.value)
            lo, hi, step = default_range(spec.name, value)
            if spec.name in self.ranges:
                lo, hi = self.ranges[spec.name][:2]
                step = self.ranges[spec.name][2] if len(self.ranges[spec.name]) > 2 else step
            lo, hi = min(lo, value), max(hi, value)
            label = self.labels.get(spec.name, spec.name)
            wide = len(label) > 10
            slider = widgets.FloatSlider(
                value=value, min=lo, max=hi, step=step,
                description=label, description_allow_html=False, readout_format=".4g",
                continuous_update=self.continuous_update,
                style={"description_width": "170px" if wide else "70px"},
                layout=widgets.Layout(width="370px" if wide else "270px"),
            )
            slider.tooltip = spec.name
            self._slider_names[slider.model_id] = spec.name
            slider.add_class(f"wb-slider-{_css(spec.name)}")
            slider.observe(self._on_slider, "value")
            self.sliders[spec.name] = slider
            self._groups[spec.name] = spec.group
            rows.append(widgets.HBox([slider, widgets.HTML(f"<small>{html.escape(spec.unit)}"
                                                           "</small>")]))
        if too_many:
            rows.insert(0, widgets.HTML(
                f"<small>{n_params} parameters (a force field's per-type tables): pick sliders "
                "with <code>include=[...]</code>, e.g. from "
                "<code>ForceFieldSystem.find_types</code></small>"))
        self.slider_box.children = rows

    def _on_slider(self, change) -> None:
        if getattr(self._local, "busy", False):
            return
        name = self._slider_names[change["owner"].model_id]
        self._local.busy = True
        try:
            if self._groups[name] == "params":
                self.session.set_params(**{name: change["new"]})
            else:
                self.session.set_settings(**{name: change["new"]})
            self.message.value = ""
        except Exception as e:  # noqa: BLE001 - show a rejected value in the panel
            self.message.value = (f'<span style="color:#b00020">{html.escape(name)}: '
                                  f"{html.escape(str(e))}</span>")
        finally:
            self._local.busy = False

    def set_value(self, name: str, value: float) -> None:
        """Move slider ``name`` as a user would (the change reaches the session)."""
        self.sliders[name].value = value

    # ---------------------------------------------------------------- refresh
    def _on_params(self, values) -> None:
        if not getattr(self._local, "busy", False):  # a change made from code: follow it
            self._sync_needed = True
        self._updater.poke()

    def _on_status(self, status: str) -> None:
        if status == "rebuilt":
            self._rebuild_sliders = True
        self._updater.poke()

    def _refresh(self) -> None:
        s = self.session
        with self._lock:
            if self._rebuild_sliders:
                self._rebuild_sliders = False
                self._build_sliders()
            if self._sync_needed:
                self._sync_needed = False
                self._follow_session()
            r = s.last_record
            if r is not None:
                used = {k: v for k, v in {**r.params, **r.settings}.items()
                        if k in self.sliders}  # a force field has thousands: show the sliders
                text = ", ".join(f"{k}={_fmt(v)}" for k, v in used.items())
                self.applied.value = (f'<small>last chunk ({r.index}) used:</small> '
                                      f'<span class="wb-applied-values">{html.escape(text)}'
                                      "</span>")
            else:
                self.applied.value = "<small>no chunk run yet</small>"
            pending = {k: v for k, v in s.pending().items() if k in self.sliders}
            self.pending.value = ("<small>pending (next chunk): "
                                  + html.escape(", ".join(f"{k}={_fmt(v)}"
                                                          for k, v in pending.items()))
                                  + "</small>") if pending else ""
            self.compiles.value = (f'<span class="wb-compile-count">compiles: '
                                   f"{s.compile_count}</span>")

    def _follow_session(self) -> None:
        """Move sliders to values set from code (without sending them back)."""
        self._local.busy = True
        try:
            for spec in self.session.param_specs():
                slider = self.sliders.get(spec.name)
                if slider is None or abs(slider.value - spec.value) <= 1e-6 * max(
                        1.0, abs(spec.value)):
                    continue
                value = _round(spec.value)
                # range first, value second, in separate messages (see SimulationPanel)
                slider.min, slider.max = min(slider.min, value), max(slider.max, value)
                slider.value = value
        finally:
            self._local.busy = False

    def refresh(self, timeout: float | None = None) -> None:
        """Bring the labels up to date now."""
        self._updater.wait_idle(timeout)
        self._updater.refresh_now()

    def close(self) -> None:
        """Detach from the session and close the widgets."""
        for off in self._unsubscribe:
            off()
        self._updater.close()
        super().close()


def _css(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
