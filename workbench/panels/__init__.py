"""Live Jupyter panels over a :class:`workbench.session.Session` (ipywidgets, nglview,
matplotlib). The only part of workbench that imports widget libraries; no physics here.

* :class:`SimulationPanel` - nglview view updated in place, energy / temperature / pressure
  plots, run controls, frame replay, export;
* :class:`ParameterPanel` - sliders generated from the parameter pytree and the integrator
  settings (numeric: applied at the next chunk, no recompilation), compile count;
* :class:`FreeEnergyPanel` - the free-energy surface of a metadynamics run growing live, the
  CV time series and (for replica exchange) the acceptance matrix;
* :class:`GradientPanel` - d(loss)/d(parameter) following the sliders, the loss curve, and
  step / run / stop of an optimizer (over a :class:`~workbench.session.gradients.GradientSession`);
* :class:`TrainingPanel` - a neural potential's training live: error curves, force parity,
  per-element errors, train / stop (over a :class:`~workbench.session.training.TrainingSession`);
* :class:`Workbench` - simulation and parameter panels side by side, with any further panels
  of the same session; each also works alone.

Needs ``nglview==4.0`` in JupyterLab 4 (see docs on the 4.0.1 frontend mismatch).
"""

from .free_energy import FreeEnergyPanel
from .gradients import GradientPanel
from .parameters import ParameterPanel, default_range
from .runner import LiveUpdater, RunControls
from .simulation import SimulationPanel, ThermoFigure
from .training import TrainingPanel
from .workbench_view import Workbench

__all__ = ["FreeEnergyPanel", "GradientPanel", "LiveUpdater", "ParameterPanel", "RunControls", "SimulationPanel", "ThermoFigure",
           "TrainingPanel", "Workbench", "default_range"]
