"""The ``workbench`` command line: help, version, ``lab`` command building, ``bench lj``, and
``compare-openmm``'s exit codes and its answers to bad input.

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
from workbench.systems import data_file

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
    assert "workbench_bench.no_such_benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(set(cli.BENCHMARKS) - {"lj"}))
def test_every_benchmark_gets_its_own_arguments(name, monkeypatch):
    """`workbench bench NAME ARGS` hands ARGS to NAME's own parser (startup's --json was
    refused as an unrecognized argument by the top-level parser)."""
    seen = {}
    monkeypatch.setattr(cli, "_run_bench_module", lambda n, extra: seen.setdefault(n, extra) and 0)
    assert cli.main(["bench", name, "--json", "out.json"]) == 0
    assert seen == {name: ["--json", "out.json"]}


def test_benchmarks_live_outside_the_package():
    """The benchmark code is in benchmarks/ (not in the wheel); a checkout finds it."""
    assert importlib.util.find_spec("workbench.bench") is None
    assert cli.bench_dir() is not None and cli.bench_dir().name == "benchmarks"
    assert cli.bench_module("startup").main is not None
    lj = cli.bench_module("lj")
    from workbench_bench import ljcase, peers

    # one definition of the LJ case, shared by the engine and the peers (no import circle)
    assert lj.LJCase is ljcase.LJCase is peers.LJCase
    with pytest.raises(ModuleNotFoundError, match="no benchmark named 'peers'"):
        cli.bench_module("peers")


def test_bench_panels_dispatches_to_its_module():
    out = _workbench("bench", "panels", "--help")
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
    lj = cli.bench_module("lj")
    from workbench_bench import peers

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
    unsupported force field (AMOEBA's multipoles), with the reason on stderr; a --cutoff that
    NoCutoff ignores is said so."""
    pdb = data_file("alanine-dipeptide-vacuum.pdb")
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml",
                     "--cutoff", "0.9"]) == 0
    out, err = capsys.readouterr()
    assert "all 4 terms agree" in out and "PeriodicTorsionForce" in out
    assert "--cutoff 0.9 is ignored with --nonbonded NoCutoff" in err
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml",
                     "--tolerance", "0"]) == 1
    out, err = capsys.readouterr()
    assert "disagree" in out and "ignored" not in err  # no --cutoff given: no warning
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amoeba2018.xml"]) == 2
    assert "compare-openmm: unsupported:" in capsys.readouterr().err


def test_compare_openmm_help_documents_exit_codes():
    out = _workbench("compare-openmm", "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "exit status:" in text
    for code in ("0  every term agrees", "1  at least one term disagrees", "2  bad input"):
        assert code in text, code
    assert "exit status of ``compare-openmm``" in cli.__doc__.lower()


def _boxed_peptide(path: Path, edge_angstrom: float) -> str:
    """Alanine dipeptide in a cubic CRYST1 box of ``edge_angstrom``."""
    cryst = f"CRYST1{edge_angstrom:9.3f}{edge_angstrom:9.3f}{edge_angstrom:9.3f}" \
            "  90.00  90.00  90.00 P 1           1 \n"
    path.write_text(cryst + Path(data_file("alanine-dipeptide-vacuum.pdb")).read_text())
    return str(path)


def test_compare_openmm_box_between_cutoff_and_cutoff_plus_skin(tmp_path, capsys):
    """A 2.2 nm box with a 1.0 nm cutoff: OpenMM accepts it (>= 2 x cutoff), the default
    neighbor-list skin (0.2 nm) does not fit, so a skin of 0.1 nm is used and said."""
    pdb = _boxed_peptide(tmp_path / "box22.pdb", 22.0)
    assert cli.main(["compare-openmm", pdb, "--nonbonded", "CutoffPeriodic",
                     "--cutoff", "1.0"]) == 0
    out, err = capsys.readouterr()
    assert "all 4 terms agree" in out
    assert "NonbondedForce uses a skin of 0.1 nm" in err and "twice the cutoff" in err


def test_compare_openmm_box_shorter_than_twice_the_cutoff(tmp_path):
    """Even skin 0 does not fit: one clean paragraph on stderr, exit 2, no traceback."""
    pdb = _boxed_peptide(tmp_path / "box22.pdb", 22.0)
    out = _workbench("compare-openmm", pdb, "--nonbonded", "PME", "--cutoff", "1.2")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compare-openmm: error:"), out.stderr
    assert "2.2 nm" in lines[0] and "--cutoff 1.1" in lines[0]


def test_compare_openmm_periodic_method_without_box(capsys):
    pdb = data_file("alanine-dipeptide-vacuum.pdb")
    assert cli.main(["compare-openmm", pdb, "--nonbonded", "PME"]) == 2
    assert "no periodic box (no CRYST1 record)" in capsys.readouterr().err


def test_compare_openmm_water_without_water_model_hints(capsys):
    pdb = data_file("alanine-dipeptide-water.pdb")
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml"]) == 2
    err = capsys.readouterr().err
    assert "No template found for residue" in err and "(HOH)" in err
    assert "compare-openmm: hint: HOH is water" in err
    assert "--forcefield amber14-all.xml amber14/tip3p.xml" in err
    # OpenMM's bare Exception (not a ValueError) for ambiguous templates: still a clean error
    assert cli.main(["compare-openmm", pdb, "--forcefield", "charmm36.xml"]) == 2
    assert "compare-openmm: error:" in capsys.readouterr().err


def test_template_hints_name_the_water_model_of_the_force_field():
    from workbench.forcefield.compare import _template_hint

    message = "No template found for residue 7 (HOH).  The set of atoms matches HOH"
    assert "charmm36/water.xml" in _template_hint(message, ["charmm36.xml"])
    assert "amber19/tip3p.xml" in _template_hint(message, ["amber19-all.xml"])
    assert "its atoms do not match" in _template_hint(message, ["amber14-all.xml",
                                                                "amber14/tip3p.xml"])
    assert "openmmforcefields" in _template_hint(
        "No template found for residue 1 (LIG).", ["amber14-all.xml"])
    assert _template_hint("some other problem", ["amber14-all.xml"]) == ""


@pytest.mark.parametrize(("given", "suggested"), [
    ("amber14-al.xml", "Did you mean amber14-all.xml?"),
    ("amber14/tip3.xml", "Did you mean amber14/tip3p.xml?"),
    ("charm36.xml", "Did you mean charmm36.xml?"),
])
def test_compare_openmm_misspelled_forcefield_suggests_names(given, suggested, capsys):
    pdb = data_file("alanine-dipeptide-vacuum.pdb")
    assert cli.main(["compare-openmm", pdb, "--forcefield", "amber14-all.xml", given]) == 2
    err = capsys.readouterr().err
    assert f"force-field file {given!r} not found" in err and suggested in err


def test_compare_openmm_reads_pdbx(tmp_path):
    from openmm import app

    from workbench.forcefield.compare import read_structure

    pdb = app.PDBFile(data_file("alanine-dipeptide-vacuum.pdb"))
    with open(tmp_path / "ala.cif", "w") as f:
        app.PDBxFile.writeFile(pdb.topology, pdb.positions, f)
    assert read_structure(tmp_path / "ala.cif").topology.getNumAtoms() == 22


def test_shipped_forcefield_files_include_subfolders():
    from workbench.forcefield.compare import shipped_forcefield_files

    names = shipped_forcefield_files()
    assert {"amber14-all.xml", "amber14/tip3p.xml", "charmm36/water.xml",
            "implicit/obc2.xml"} <= set(names)
    assert "residues.xml" not in names  # OpenMM's support files are not force fields


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.txt", b"hello world\nthis is not a structure\n", "is not a PDB file: it has no ATOM"),
    ("garbage.pdb", bytes(range(256)) * 4, "is binary"),
    ("empty.pdb", b"", "it is empty"),
    ("broken.pdb", b"ATOM      1  N   ALA A   1    not numbers here\n", "could not read"),
    ("missing.pdb", None, "no such file"),
])
def test_compare_openmm_rejects_non_pdb_input(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["compare-openmm", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("compare-openmm: error:") and message in err, err


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
    """A small `bench grad` (256 atoms, 20 steps, 200 reweighting frames, float32): every
    figure the issue names, the checkpointed gradients equal to plain reverse mode's, jax-md
    either measured or named."""
    out = tmp_path / "grad.json"
    proc = _workbench("bench", "grad", "--steps", "20", "--atoms", "256", "--dtype", "float32",
                      "--frames", "200", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("checkpointed_peak_gb", "checkpointed_time_ratio", "checkpointed_sqrt_peak_gb",
                "checkpointed_sqrt_time_ratio"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    run = res["runs"][0]
    assert run["reweighting"]["frames"] == 200
    assert run["reweighting"]["rdf"]["seconds"] > 0 and run["reweighting"]["U"]["ess"] > 0
    plain = run["plain"]["gradient"]
    for name in ("checkpoint", "checkpoint_forces"):
        assert run[name]["gradient"] == pytest.approx(plain, rel=1e-3), name
    assert "checkpoint_forces" in proc.stdout
    peer = run["jax_md"]
    if "unavailable" in peer:
        assert "jax-md" in proc.stdout
    else:
        assert np.isfinite(peer["plain"]["gradient"]) and "jax_md_plain_peak_gb_float32" in res
