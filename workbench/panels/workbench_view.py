"""The composed workbench: simulation panel and parameter panel side by side."""

from __future__ import annotations

import ipywidgets as widgets

from .parameters import ParameterPanel
from .simulation import SimulationPanel

__all__ = ["Workbench"]


class Workbench(widgets.HBox):
    """:class:`SimulationPanel` and :class:`ParameterPanel` of one session, side by side
    (wrapping onto two rows in a narrow notebook). ``simulation`` and ``parameters`` hold the
    two panels; keyword dicts ``simulation_options`` / ``parameter_options`` go to them.
    ``panels``: more panels of the same session to show after them (e.g. a
    :class:`~workbench.panels.free_energy.FreeEnergyPanel`); refreshed and closed with them."""

    def __init__(self, session, *, simulation_options: dict | None = None,
                 parameter_options: dict | None = None, panels=(), **kwargs):
        self.session = session
        self.simulation = SimulationPanel(session, **(simulation_options or {}))
        self.parameters = ParameterPanel(session, **(parameter_options or {}))
        self.panels = list(panels)
        layout = kwargs.pop("layout", widgets.Layout(flex_flow="row wrap",
                                                     align_items="flex-start"))
        super().__init__([self.simulation, self.parameters, *self.panels], layout=layout,
                         **kwargs)
        self.add_class("wb-workbench")

    def export(self, path: str, log: str | None = "auto") -> tuple[str, str | None]:
        """Write trajectory and thermodynamics log (see :meth:`Session.export`)."""
        return self.session.export(path, log)

    def refresh(self, timeout: float | None = None) -> None:
        """Bring both panels up to date now."""
        for panel in (self.simulation, self.parameters, *self.panels):
            panel.refresh(timeout)

    def close(self) -> None:
        """Detach both panels from the session and close them."""
        for panel in (self.simulation, self.parameters, *self.panels):
            panel.close()
        super().close()
