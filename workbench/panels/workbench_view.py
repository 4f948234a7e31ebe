"""The composed workbench: simulation panel and parameter panel side by side."""

from __future__ import annotations

import ipywidgets as widgets

from .parameters import ParameterPanel
from .simulation import SimulationPanel

__all__ = ["Workbench"]


class Workbench(widgets.HBox):
    """:class:`SimulationPanel` and :class:`ParameterPanel` of one session, side by side
    (wrapping onto two rows in a narrow notebook). ``simulation`` and ``parameters`` hold the
    two panels; keyword dicts ``simulation_options`` / ``parameter_options`` go to them."""

    def __init__(self, session, *, simulation_options: dict | None = None,
                 parameter_options: dict | None = None, **kwargs):
        self.session = session
        self.simulation = SimulationPanel(session, **(simulation_options or {}))
        self.parameters = ParameterPanel(session, **(parameter_options or {}))
        layout = kwargs.pop("layout", widgets.Layout(flex_flow="row wrap",
                                                     align_items="flex-start"))
        super().__init__([self.simulation, self.parameters], layout=layout, **kwargs)
        self.add_class("wb-workbench")

    def export(self, path: str, log: str | None = "auto") -> tuple[str, str | None]:
        """Write trajectory and thermodynamics log (see :meth:`Session.export`)."""
        return self.session.export(path, log)

    def refresh(self, timeout: float | None = None) -> None:
        """Bring both panels up to date now."""
        self.simulation.refresh(timeout)
        self.parameters.refresh(timeout)

    def close(self) -> None:
        """Detach both panels from the session and close them."""
        self.simulation.close()
        self.parameters.close()
        super().close()
