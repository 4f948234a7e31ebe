"""A neural potential's training as a live session (workbench.session.training) and its panel,
without a browser: stop writes a checkpoint, train again resumes to the weights of an
uninterrupted run, and the panel draws the curves, the parity plot and the per-element errors."""

import jax
import numpy as np

from workbench.ml import Model
from workbench.ml.train import fit_shift_scale, train
from workbench.panels import TrainingPanel
from workbench.session import TrainingSession

from test_ml_training import _reference

jax.config.update("jax_enable_x64", True)


def test_training_session_stops_resumes_and_the_panel_draws(tmp_path):
    data = _reference(40, seed=3)
    tr, va, _ = data.split(30, 10, seed=0)
    model = fit_shift_scale(Model.create("painn", ("H", "O"), cutoff=0.35, seed=2, features=8,
                                         layers=1, n_rbf=4), tr)
    options = dict(steps=12, batch_size=5, eval_every=3)
    straight = train(model, tr, va, progress=False, **options)
    session = TrainingSession(model, tr, va, directory=str(tmp_path), **options)
    panel = TrainingPanel(session)
    remove = session.observe(lambda s: s.step >= 6 and s.stop(wait=False), "step")
    session.start()
    assert session.wait(timeout=300)
    assert (session.status, session.step) == ("stopped", 6), session.error
    panel.refresh(timeout=60)
    assert panel.plot.value[:4] == b"\x89PNG"
    assert "stopped" in panel.label.value and "step 6 / 12" in panel.label.value
    remove()
    session.start()
    assert session.wait(timeout=300)
    assert session.status == "done" and session.validation["step"] == [3, 6, 9, 12]
    for a, b in zip(jax.tree_util.tree_leaves(straight.model.params),
                    jax.tree_util.tree_leaves(session.best.params)):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert set(session.force_errors_by_element()) == {1, 8}
    ref, pred = session.parity()
    assert ref.shape == pred.shape == (va.forces.size,)
    panel.refresh(timeout=60)
    assert "done" in panel.label.value
    # MD with the best model, in a simulation panel below the plots
    panel.md_positions = va.positions[0]
    md = panel.start_md(chunks=2)
    assert md.wait(timeout=300) and md.frames().shape[1:] == (6, 3)
    assert len(panel.md_box.children) == 1
    panel.close()
    assert panel.md_session is None
