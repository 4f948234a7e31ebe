"""The live simulation panel: an nglview view, thermodynamics plots, run controls and export.

Data path: the session's runner thread produces frames and calls the panel's observers, which
only mark things dirty; two :class:`~workbench.panels.runner.LiveUpdater` threads then push the
newest coordinates into the view in place (``set_coordinates``, binary buffer, no structure
re-added) at most ``view_rate`` times per second, and redraw the plots (matplotlib Agg into an
``ipywidgets.Image``, lines updated with ``set_data``) at most ``plot_rate`` times per second,
so slow drawing never delays the view. After a run, the frame slider (and its play button) replays the kept frames.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
import threading
import time

import ipywidgets as widgets
import numpy as np

from ..session import UNITS
from .runner import LiveUpdater, RunControls

__all__ = ["SimulationPanel", "ThermoFigure", "structure_pdb"]


def structure_pdb(session, positions=None) -> str:
    """PDB text (angstrom, CRYST1 box) of ``positions`` (N, 3) nm wrapped into the box; the
    session's newest frame by default. Reduced units are written as if sigma were 1 nm."""
    import mdtraj as md

    xyz = session.wrapped(session.frame(-1) if positions is None else positions)
    traj = md.Trajectory(np.asarray(xyz, np.float32)[None], session.topology())
    if session.box is not None:
        traj.unitcell_vectors = np.asarray(session.box, np.float32)[None]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "structure.pdb")
        traj.save_pdb(path)
        with open(path) as fh:
            return fh.read()


class ThermoFigure:
    """Stacked axes (energies per atom, temperature, pressure) drawn with matplotlib's Agg
    canvas (no pyplot, no global backend) and returned as PNG bytes. In molecular units the
    temperature is in K (kT in kJ/mol on the right-hand axis) and the pressure in bar; without
    a pressure (free space: ``pressure=False``) its axes are left out rather than drawn empty."""

    def __init__(self, units: str = "molecular", width_px: int = 430, height_px: int = 380,
                 dpi: int = 80, pressure: bool = True):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from ..units import BOLTZMANN

        u = UNITS[units]
        molecular = units == "molecular"
        self.fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        axes = self.fig.subplots(3 if pressure else 2, 1, sharex=True)
        self.ax_e, self.ax_t = axes[0], axes[1]
        self.ax_p = axes[2] if pressure else None
        t_col = "temperature" if molecular else "kT"
        p_col = "pressure_bar" if molecular else "pressure"
        self.lines = {
            "potential": self.ax_e.plot([], [], lw=1.2, label="potential")[0],
            "kinetic": self.ax_e.plot([], [], lw=1.2, label="kinetic")[0],
            "total": self.ax_e.plot([], [], lw=1.2, label="total")[0],
            t_col: self.ax_t.plot([], [], lw=1.2, color="C3")[0],
        }
        if pressure:
            self.lines[p_col] = self.ax_p.plot([], [], lw=1.2, color="C4")[0]
        self.markers = [ax.axvline(0.0, color="0.4", lw=0.8, ls="--", visible=False)
                        for ax in axes]
        self.ax_e.set_ylabel(f"E / atom ({u['energy']})")
        self.ax_e.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7, ncol=3,
                         frameon=False, borderaxespad=0.1)
        if molecular:
            self.ax_t.set_ylabel("T (K)")
            kt = self.ax_t.secondary_yaxis(
                "right", functions=(lambda t: t * BOLTZMANN, lambda e: e / BOLTZMANN))
            kt.set_ylabel(f"kT ({u['energy']})", fontsize=7)
            kt.tick_params(labelsize=7)
        else:
            self.ax_t.set_ylabel(f"kT ({u['energy']})")
        if pressure:
            self.ax_p.set_ylabel("P (bar)" if molecular else
                                 f"P ({u['energy']}/{u['length']}³)")
        axes[-1].set_xlabel(f"time ({u['time']})")
        self._axes = tuple(axes)
        for ax in self._axes:
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        self.columns = ("time", *self.lines)

    def update(self, thermo: dict, n_atoms: int, marker_time: float | None = None) -> bytes:
        """Set the lines from ``thermo`` (arrays of equal length) and return a PNG."""
        t = np.asarray(thermo.get("time", ()), float)
        for name, line in self.lines.items():
            y = np.asarray(thermo.get(name, np.zeros_like(t)), float)
            if name in ("potential", "kinetic", "total"):
                y = y / max(n_atoms, 1)
            line.set_data(t, y)
        for m in self.markers:
            m.set_visible(marker_time is not None)
            if marker_time is not None:
                m.set_xdata([marker_time, marker_time])
        for ax in self._axes:
            ax.relim(visible_only=True)
            ax.autoscale_view()
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


class SimulationPanel(widgets.VBox):
    """Live view of a :class:`~workbench.session.Session`.

    view_rate / plot_rate: most view / plot updates per second. chunks_per_start: chunks the
    Start button runs (None: until Stop). width, height: view size in px. atom_radius: drawn
    radius in angstrom (default: half of the pair potential's sigma). export_path: default
    file name in the export box (.h5 or .dcd; the CSV log goes beside it). max_plot_points:
    long histories are thinned to about this many points per line.
    """

    def __init__(self, session, *, view_rate: float = 8.0, plot_rate: float = 3.0,
                 chunks_per_start: int | None = None, width: int = 400, height: int = 380,
                 atom_radius: float | None = None, export_path: str = "trajectory.h5",
                 max_plot_points: int = 2000, **kwargs):
        self.session = session
        self.max_plot_points = int(max_plot_points)
        self._size = (width, height)
        self._atom_radius = atom_radius
        self._lock = threading.RLock()
        self._plot_lock = threading.RLock()
        self._frames_dirty = self._plot_dirty = True
        self._rebuild_view = False
        self._internal = False
        self._marker_frame: int | None = None
        self.view_updates = 0
        self.first_view_update_at: float | None = None
        self.last_view_update_at: float | None = None

        self.controls = RunControls(session, chunks_per_start)
        top = session.topology()
        self.molecular = top.n_bonds > 0
        has_water = any(r.is_water for r in top.residues)
        self.water_toggle = widgets.Checkbox(
            value=True, description="water", indent=False,
            layout=widgets.Layout(width="90px", display="" if has_water else "none"))
        self.water_toggle.add_class("wb-water-toggle")
        self.water_toggle.observe(self._on_water_toggle, "value")
        self.view = self._make_view()
        self._figure = ThermoFigure(session.simulation.units, width_px=430, height_px=height,
                                    pressure=bool(session.system.space.periodic))
        self.plot = widgets.Image(format="png", layout=widgets.Layout(width="430px"))
        self.plot.add_class("wb-plot")
        self.plot_label = widgets.HTML()
        self.plot_label.add_class("wb-plot-points")
        self.frame_slider = widgets.IntSlider(
            value=0, min=0, max=0, description="frame", continuous_update=False,
            layout=widgets.Layout(width="360px"))
        self.frame_slider.add_class("wb-frame-slider")
        self.play = widgets.Play(value=0, min=0, max=0, interval=100, description="replay")
        widgets.jslink((self.play, "value"), (self.frame_slider, "value"))
        widgets.jslink((self.play, "max"), (self.frame_slider, "max"))
        self.frame_slider.observe(self._on_slider, "value")
        self.export_path = widgets.Text(value=export_path, description="file",
                                        layout=widgets.Layout(width="300px"))
        self.export_button = widgets.Button(description="Export", icon="save",
                                            tooltip="trajectory (.h5/.dcd) + thermo log (.csv)")
        self.export_button.add_class("wb-export")
        self.export_button.on_click(lambda _: self._on_export())
        self.export_label = widgets.HTML()
        self.export_label.add_class("wb-export-result")
        self._view_box = widgets.Box([self.view])
        super().__init__([
            widgets.HBox([self._view_box, widgets.VBox([self.plot, self.plot_label])]),
            widgets.HBox([self.play, self.frame_slider, self.water_toggle]),
            self.controls,
            widgets.HBox([self.export_path, self.export_button, self.export_label]),
        ], **kwargs)
        self.add_class("wb-simulation-panel")
        self._view_updater = LiveUpdater(self._refresh_view, rate=view_rate, name="view")
        self._plot_updater = LiveUpdater(self._refresh_plot, rate=plot_rate, name="plot")
        self._unsubscribe = [
            session.observe(self._on_frames, "frames"),
            session.observe(self._on_status, "status"),
            session.observe(lambda _: self._view_updater.poke(), "error"),
        ]
        self._view_updater.poke()
        self._plot_updater.poke()

    # ---------------------------------------------------------------- nglview
    def _radius(self) -> float:
        if self._atom_radius is not None:
            return float(self._atom_radius)
        sigma = self.session.param_values().get("sigma")
        if sigma is None:
            return 1.5
        return 0.45 * 10.0 * sigma  # angstrom; reduced units are written as sigma = 1 nm

    def _make_view(self):
        import nglview

        structure = nglview.TextStructure(structure_pdb(self.session), ext="pdb")
        view = nglview.NGLWidget(structure, default_representation=False)
        self._add_representations(view)
        view.camera = "orthographic"
        # change the existing layout (nglview watches it and resizes its stage)
        view.layout.width, view.layout.height = f"{self._size[0]}px", f"{self._size[1]}px"
        view.layout.flex = "0 0 auto"
        # queued until the frontend has loaded the structure: fit the stage to its final size
        # and centre the camera (otherwise NGL may keep the size it saw while being attached)
        view.handle_resize()
        view.center()
        view.add_class("wb-ngl")
        self._view_atoms = self.session.n_atoms
        return view

    def _add_representations(self, view) -> None:
        """Molecules (a topology with bonds) as ball-and-stick, water as lines (hidden by the
        water toggle), ions as spheres; atoms without bonds (fluids) as spheres."""
        if self.molecular:
            view.add_representation("ball+stick", selection="not water and not ion",
                                    aspectRatio=2.5)
            view.add_representation("spacefill", selection="ion", radius=1.2)
            if self.water_toggle.value:
                view.add_representation("line", selection="water", opacity=0.6)
        else:
            view.add_representation("spacefill", selection="all", radius=self._radius(),
                                    color="#3b7dd8")
        if self.session.box is not None:
            view.add_representation("unitcell")

    def _on_water_toggle(self, change) -> None:
        with self._lock:
            self.view.clear_representations()
            self._add_representations(self.view)

    def _show(self, positions) -> None:
        xyz = self.session.wrapped(positions) * 10.0  # nm -> angstrom
        self.view.set_coordinates({0: np.asarray(xyz, np.float32)})

    # ---------------------------------------------------------------- events (runner thread)
    def _on_frames(self, batch) -> None:
        self._frames_dirty = self._plot_dirty = True
        self._view_updater.poke()
        self._plot_updater.poke()

    def _on_status(self, status: str) -> None:
        if status == "rebuilt":
            self._rebuild_view = True
        if status in ("rebuilt", "reset"):
            self._frames_dirty = self._plot_dirty = True
            self._marker_frame = None
            self._plot_updater.poke()
        self._view_updater.poke()

    # ---------------------------------------------------------------- refresh (updater threads)
    def _refresh_view(self) -> None:
        """View coordinates, frame slider and run controls (the fast updater)."""
        s = self.session
        with self._lock:
            if self._rebuild_view:
                self._rebuild_view = False
                if s.n_atoms != self._view_atoms:  # same atoms: new coordinates suffice
                    old, self.view = self.view, self._make_view()
                    self._view_box.children = [self.view]
                    old.close()
            if self._frames_dirty:
                self._frames_dirty = False
                n = s.n_frames
                live = s.status == "running" or self._marker_frame is None
                self._internal = True
                try:  # max first, then value, in separate messages: a browser slider that
                    # gets both at once re-sends its stale handle position as a new value
                    self.frame_slider.max = max(n - 1, 0)
                    if live:
                        self.frame_slider.value = max(n - 1, 0)
                finally:
                    self._internal = False
                if live:
                    self._marker_frame = None
                    self._show(s.frame(-1))
                    self.view_updates += 1
                    self.last_view_update_at = time.perf_counter()
                    if self.first_view_update_at is None and s.frames_total:
                        self.first_view_update_at = self.last_view_update_at
            self.controls.refresh()

    def _refresh_plot(self) -> None:
        """The thermodynamics figure (the slow updater: drawing takes tens of ms)."""
        with self._plot_lock:
            if self._plot_dirty:
                self._plot_dirty = False
                self._draw_plot()

    def _draw_plot(self) -> None:
        s = self.session
        n = s.frames_total
        every = max(1, -(-n // self.max_plot_points))
        thermo = s.thermo(self._figure.columns, every=every)
        marker = None
        if self._marker_frame is not None and n:
            k = n - s.n_frames + self._marker_frame
            if 0 <= k < n:
                marker = float(s.thermo(["time"])["time"][k])
        self.plot.value = self._figure.update(thermo, s.n_atoms, marker)
        self.plot_label.value = (
            f'<span class="wb-points">plotted points: {n}</span>'
            + (f" &middot; showing frame {self._marker_frame}" if marker is not None else "")
        )

    # ---------------------------------------------------------------- replay and export
    def _on_slider(self, change) -> None:
        if self._internal or self.session.status == "running":
            return
        index = int(change["new"])
        with self._lock:
            if self.session.n_frames == 0:
                return
            self._marker_frame = index
            self._show(self.session.frame(index))
            self._plot_dirty = True
        self._plot_updater.poke()

    def show_frame(self, index: int) -> None:
        """Show kept frame ``index`` (replay); only while no run is going."""
        self.frame_slider.value = index

    def export(self, path: str, log: str | None = "auto") -> tuple[str, str | None]:
        """Write the kept frames (``path``: .h5 or .dcd) and the thermodynamics log (CSV);
        see :meth:`Session.export`. Returns (trajectory path, log path)."""
        return self.session.export(path, log)

    def _on_export(self) -> None:
        try:
            traj, log = self.export(self.export_path.value.strip())
            self.export_label.value = (
                f"wrote {html.escape(traj)} ({self.session.n_frames} frames)"
                + (f" and {html.escape(log)}" if log else "")
            )
        except Exception as e:  # noqa: BLE001 - show the problem in the panel
            self.export_label.value = (
                f'<span style="color:#b00020">export failed: {html.escape(str(e))}</span>')

    # ---------------------------------------------------------------- housekeeping
    def refresh(self, timeout: float | None = None) -> None:
        """Bring every widget up to date now (waits for a pending background refresh)."""
        for updater in (self._view_updater, self._plot_updater):
            updater.wait_idle(timeout)
        self._frames_dirty = self._plot_dirty = True
        self._view_updater.refresh_now()
        self._plot_updater.refresh_now()

    def close(self) -> None:
        """Detach from the session and close the widgets."""
        for off in self._unsubscribe:
            off()
        self._view_updater.close()
        self._plot_updater.close()
        self.view.close()
        super().close()
