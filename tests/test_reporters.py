"""Reporters for Simulation.run: each gets the frames it asked for, files keep everything
written before an error, and plain callables still work."""

import io

import mdtraj as md
import numpy as np
import pytest

import workbench as wb
from workbench import reporters as rep
from workbench.simulate import BlowupError, Simulation


@pytest.fixture(scope="module")
def fluid():
    return wb.lj_fluid(n_atoms=256, density=0.8442)


def _sim(fluid, **kw):
    return Simulation(fluid, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0), report_interval=5,
                      frames_per_chunk=4, seed=1, **kw)


class Counter(rep.BaseReporter):
    needs = frozenset({"thermo"})

    def __init__(self, every):
        super().__init__(every)
        self.steps, self.opened, self.closed = [], 0, 0

    def open(self, simulation):
        self.opened += 1

    def report(self, simulation, chunk):
        self.steps.extend(int(s) for s in chunk.thermo["step"])

    def close(self):
        self.closed += 1


def test_each_reporter_gets_the_frames_it_asked_for(fluid, tmp_path):
    every1, every3, seen = Counter(1), Counter(3), []
    text = io.StringIO()
    sim = _sim(fluid)
    out = sim.run(65, progress=False, reporters=[every1, every3, seen.append,
                                                  rep.PrintReporter(every=4, stream=text),
                                                  rep.LogReporter(tmp_path / "log.csv", 2),
                                                  rep.TrajectoryReporter(tmp_path / "t.h5", 5)])
    assert every1.steps == list(range(5, 66, 5)) == out["step"].tolist()
    assert every3.steps == [15, 30, 45, 60]
    assert every1.opened == every1.closed == 1
    assert sum(len(c.positions) for c in seen) == 13
    lines = text.getvalue().strip().splitlines()
    assert len(lines) == 1 + 3 and lines[1].split()[0] == "20"
    log = np.genfromtxt(tmp_path / "log.csv", delimiter=",", names=True)
    assert log["step"].tolist() == [10, 20, 30, 40, 50, 60]
    t = md.load(str(tmp_path / "t.h5"))
    assert t.n_frames == 2


def test_bad_every_is_named():
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        rep.LogReporter("x.csv", every=0)


def test_a_blowup_keeps_good_frames_and_checkpoints_the_last_good_state(fluid, tmp_path):
    sim = _sim(fluid)
    sim.run(20, progress=False)
    good_step = int(sim.state.step)
    sim.set_settings(dt=5.0)  # certain to blow up
    log, ckpt = tmp_path / "log.csv", tmp_path / "state.npz"
    counter = Counter(1)
    with pytest.raises(BlowupError) as err:
        sim.run(40, progress=False, log=str(log), checkpoint=str(ckpt), reporters=[counter])
    assert counter.closed == 1
    assert err.value.step > good_step
    again = _sim(fluid)
    again.load_checkpoint(str(ckpt))
    assert int(again.state.step) == good_step
