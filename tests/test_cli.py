"""The ``workbench`` command line: help, version, ``lab`` command building, ``bench lj``.

The benchmark runs in a subprocess (``python -m workbench.cli``) so it uses the package's
default float32 precision, not this test session's float64.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench import cli

ROOT = Path(__file__).resolve().parent.parent


def _workbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_ENABLE_X64="0")
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, check=False)


def test_help_lists_commands():
    out = _workbench("--help")
    assert out.returncode == 0, out.stderr
    assert "lab" in out.stdout and "bench" in out.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert "workbench" in capsys.readouterr().out


def test_bench_lj_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "lj", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--atoms", "--steps", "--compare", "--json", "--repeat"):
        assert flag in text


def test_notebooks_dir_found_from_package_and_cwd(tmp_path):
    found = cli.notebooks_dir(cwd=tmp_path)
    assert found == (ROOT / "notebooks").resolve()
    assert any(found.glob("*.ipynb"))


def test_lab_command_uses_this_python_and_notebooks(tmp_path):
    cmd = cli.lab_command(["--port", "8899", "--no-browser"], notebooks=tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "jupyter", "lab"]
    assert f"--ServerApp.root_dir={tmp_path}" in cmd
    assert cmd[-3:] == ["--port", "8899", "--no-browser"]
    if os.geteuid() == 0:
        assert "--allow-root" in cmd


def test_lab_command_default_root_and_user_root():
    cmd = cli.lab_command()
    assert f"--ServerApp.root_dir={(ROOT / 'notebooks').resolve()}" in cmd
    mine = cli.lab_command(["--ServerApp.root_dir=/somewhere"])
    assert [a for a in mine if "root_dir" in a] == ["--ServerApp.root_dir=/somewhere"]
    assert cli.lab_command(["--", "--help"])[-1] == "--help"


def test_lab_print_command(capsys):
    assert cli.main(["lab", "--print-command", "--no-browser"]) == 0
    line = capsys.readouterr().out.strip()
    assert "-m jupyter lab" in line and "notebooks" in line and line.endswith("--no-browser")


def test_missing_bench_module_is_clear(capsys):
    assert cli._run_bench_module("no_such_benchmark", []) == 2
    assert "workbench.bench.no_such_benchmark" in capsys.readouterr().err


def test_bench_panels_dispatches_to_its_module():
    out = _workbench("bench", "panels", "--help")
    if importlib.util.find_spec("workbench.bench.panels") is None:
        assert out.returncode == 2 and "workbench.bench.panels" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert "workbench bench panels" in out.stdout


def test_bench_lj_rejects_non_fcc_size():
    out = _workbench("bench", "lj", "--atoms", "1000", "--no-cold")
    assert out.returncode == 2
    assert "4 n^3" in out.stderr and "864" in out.stderr


def test_bench_lj_rejects_box_smaller_than_cutoff():
    out = _workbench("bench", "lj", "--atoms", "108", "--no-cold")
    assert out.returncode == 2
    assert "256" in out.stderr


def test_bench_lj_unknown_peer():
    out = _workbench("bench", "lj", "--compare", "gromacs")
    assert out.returncode == 2
    assert "jax-md" in out.stderr


def _check_results(path: Path, engines: set[str]) -> dict:
    data = json.loads(path.read_text())
    assert data["benchmark"] == "lj"
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["jax_version"]
    assert {r["engine"] for r in data["results"]} == engines
    for r in data["results"]:
        assert r["n_atoms"] == 256 and r["steps"] == 200
        assert r["atom_steps_per_s"] > 0 and r["compile_s"] > 0
        assert r["energy_finite"]
        assert math.isfinite(r["energy_start"]) and math.isfinite(r["energy_end"])
        assert abs(r["energy_end"] - r["energy_start"]) < 0.05  # NVE, per atom
    return data


def test_bench_lj_runs_and_writes_json(tmp_path):
    path = tmp_path / "lj.json"
    out = _workbench("bench", "lj", "--atoms", "256", "--steps", "200", "--chunk", "50",
                     "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "atom-steps/s" in out.stdout and "workbench" in out.stdout
    data = _check_results(path, {"workbench"})
    r = data["results"][0]
    assert r["cold_first_chunk_s"] > 0 and r["rebuilds"] >= 1
    assert abs(r["energy_start"] - (-4.6218)) < 1e-3  # the fcc lattice at T = 1.44


def test_bench_lj_peers(tmp_path):
    missing = [m for m in ("jax_md", "openmm") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"benchmark peers not installed: {missing} (pip install -e '.[bench]')")
    path = tmp_path / "peers.json"
    out = _workbench("bench", "lj", "--atoms", "256", "--steps", "200", "--chunk", "50",
                     "--compare", "jax-md,openmm", "--jaxmd-format", "Dense", "--no-cold",
                     "--json", str(path))
    assert out.returncode == 0, out.stderr
    data = _check_results(path, {"workbench", "jax-md", "openmm"})
    start = [r["energy_start"] for r in data["results"]]
    assert max(start) - min(start) < 1e-3  # the same system in every engine


def test_missing_peer_is_skipped_with_install_hint(monkeypatch, capsys):
    from workbench.bench import lj, peers

    with pytest.raises(ImportError, match=r"pip install -e \".\[bench\]\""):
        peers._require("no_such_peer_package", "NoSuchPeer")

    def unavailable(name):
        raise peers.PeerUnavailable(f"{name} is not installed; {peers.INSTALL_HINT}")

    monkeypatch.setattr(peers, "engine_class", unavailable)
    status = lj.main(["--atoms", "256", "--steps", "50", "--chunk", "50", "--no-cold",
                      "--compare", "openmm"])
    assert status == 0
    captured = capsys.readouterr()
    assert "skipping openmm" in captured.err and "pip install" in captured.err
    assert "workbench" in captured.out and "skipped openmm" in captured.out


def test_compare_openmm_exit_codes(capsys):
    """0 when every term agrees, 1 when one does not (an impossible tolerance), 2 for an
    unsupported force field (AMOEBA's multipoles), with the reason printed."""
    from workbench.systems import data_file

    pdb = data_file("alanine-dipeptide-vacuum.pdb")
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml"]) == 0
    out = capsys.readouterr().out
    assert "all 4 terms agree" in out and "PeriodicTorsionForce" in out
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml",
                 "--tolerance", "0"]) == 1
    assert "disagree" in capsys.readouterr().out
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amoeba2018.xml"]) == 2
    assert "UnsupportedForceError" in capsys.readouterr().out


def test_bench_sampling_runs_and_writes_json(tmp_path):
    out = tmp_path / "sampling.json"
    proc = _workbench("bench", "sampling", "--steps", "50", "--rounds", "2", "--states", "6",
                      "--samples", "600", "--skip", "solvated", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert np.isfinite(res["metadynamics_overhead"])
    assert res["mbar_speedup_vs_pymbar"] > 0
    assert res["mbar"]["max_f_difference_kT"] < 1e-6
    assert res["replica_exchange"]["one_device_replica_steps_per_s"] > 0
    assert "metadynamics:" in proc.stdout and "MBAR" in proc.stdout


def test_bench_grad_runs_and_writes_json(tmp_path):
    """A small `bench grad` (256 atoms, 20 steps, float32): every figure the issue names, the
    checkpointed gradients equal to plain reverse mode's, jax-md either measured or named."""
    out = tmp_path / "grad.json"
    proc = _workbench("bench", "grad", "--steps", "20", "--atoms", "256", "--dtype", "float32",
                      "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("checkpointed_peak_gb", "checkpointed_time_ratio", "checkpointed_sqrt_peak_gb",
                "checkpointed_sqrt_time_ratio"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    run = res["runs"][0]
    plain = run["plain"]["gradient"]
    for name in ("checkpoint", "checkpoint_forces"):
        assert run[name]["gradient"] == pytest.approx(plain, rel=1e-3), name
    assert "checkpoint_forces" in proc.stdout
    peer = run["jax_md"]
    if "unavailable" in peer:
        assert "jax-md" in proc.stdout
    else:
        assert np.isfinite(peer["plain"]["gradient"]) and "jax_md_plain_peak_gb_float32" in res
