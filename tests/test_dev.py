"""``dev.py``: stopping ``dev.py lab`` stops JupyterLab and its kernels; what ``dev.py test``
sets up (the compilation cache, the notebook knob, the --fast selection).

The lab test runs the real chain (dev.py -> ``python -m workbench.cli lab`` -> ``jupyter lab`` ->
a kernel) on 127.0.0.1 with Jupyter's directories in a temporary folder, waits until the server
answers, sends SIGTERM to dev.py and checks that the port closes and that no process of the tree
survives. dev.py would reinstall .venv if its stamp did not match pyproject.toml; then the test
starts the ``workbench lab`` command directly instead (the same signal handling, one level less).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from browser_helpers import LabServer, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 120.0  # only stops a broken run from hanging; never a performance check


def _dev_module():
    spec = importlib.util.spec_from_file_location("dev_under_test", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dev_skips_install(dev) -> bool:
    """Whether `dev.py lab` would start at once (its install stamp matches pyproject.toml)."""
    if Path(sys.prefix).resolve() != dev.VENV.resolve():
        return False
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return any({"lab"} <= dev._stamp_extras(s) for s in dev.VENV.glob(f".installed-*-{digest}"))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _post(url: str) -> dict:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _tree(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def _command_lines(processes) -> str:
    """The command lines of ``processes`` still running (a short-lived helper that already
    exited, a zombie not yet reaped, has none)."""
    lines = []
    for p in processes:
        try:
            lines.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:  # ZombieProcess included
            pass
    return "\n".join(lines)


def test_sigterm_to_dev_lab_stops_jupyterlab_and_its_kernels(tmp_path):
    dev = _dev_module()
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    lab_args = ["--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
                "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
                "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}"]
    if _dev_skips_install(dev):
        cmd = [sys.executable, str(ROOT / "dev.py"), "lab", *lab_args]
    else:
        cmd = [sys.executable, "-m", "workbench.cli", "lab", *lab_args]
    env = LabServer(root, tmp_path / "unused.log").env()  # Jupyter's dirs under tmp_path
    log_path = tmp_path / "lab.log"
    base = f"http://127.0.0.1:{port}"
    tree: list[psutil.Process] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[1:3]} exited early: {log_path.read_text()}")
            return _answers(f"{base}/api/status")

        wait_until(ready, "JupyterLab to answer", DEADLINE_S, poll_s=0.25)
        assert _post(f"{base}/api/kernels")["id"]  # a kernel: it must not outlive the server
        wait_until(lambda: "ipykernel" in _command_lines(_tree(proc.pid)), "the kernel process",
                   DEADLINE_S, poll_s=0.25)
        tree = _tree(proc.pid)
        assert "jupyter" in _command_lines(tree)

        proc.send_signal(signal.SIGTERM)
        status = proc.wait(DEADLINE_S)
        assert status == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
        assert not _answers(f"{base}/api/status"), "JupyterLab still answers after dev.py stopped"

        def survivors():
            alive = []
            for p in tree:
                try:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(" ".join(p.cmdline()))
                except psutil.NoSuchProcess:
                    pass
            return alive

        try:
            wait_until(lambda: not survivors(), "every process of the tree to exit", 30.0,
                       poll_s=0.25)
        except AssertionError:
            raise AssertionError(f"still running after dev.py stopped: {survivors()}") from None
    finally:  # leave nothing behind, whatever the outcome
        if proc.poll() is None:
            proc.kill()
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()


def test_dev_test_environment_and_fast_selection(tmp_path, monkeypatch):
    """`dev.py test --fast` runs tests/ without notebooks, with the slow/browser filter and a
    time budget; both modes export the JAX cache and the notebook knob (user values win)."""
    dev = _dev_module()
    monkeypatch.setattr(dev, "ensure_venv", lambda extras: None)
    monkeypatch.setattr(dev, "ensure_chromium", lambda: None)
    monkeypatch.setattr(dev, "CACHE", tmp_path / ".cache")
    calls = []
    monkeypatch.setattr(dev.subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw)) or 0)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
    monkeypatch.setenv("WORKBENCH_TEST_WORKERS", "2")

    assert dev.test(["--fast", "-k", "pair"]) == 0
    cmd, kw = calls[-1]
    assert "--fast" not in cmd and "notebooks" not in cmd and "tests" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "not slow and not browser"
    assert any(a.startswith("--time-budget=") for a in cmd)
    assert cmd[-2:] == ["-k", "pair"] and ["-n", "2"] == cmd[cmd.index("-n"):cmd.index("-n") + 2]
    env = kw["env"]
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / ".cache" / "jax")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"  # the user's value
    assert env["WORKBENCH_NOTEBOOK_SMALL"] == "1"

    assert dev.test(["tests/test_dev.py"]) == 0
    cmd, kw = calls[-1]
    assert "notebooks" not in cmd and cmd.count("tests") == 0 and "tests/test_dev.py" in cmd
    assert not any(a.startswith("--time-budget") for a in cmd)
    assert dev.test([]) == 0
    assert {"tests", "notebooks"} <= set(calls[-1][0])
    assert calls[-1][1]["env"]["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"


def test_time_budget_keeps_the_quickest_recorded_tests(tmp_path):
    """The plugin half of dev.py in a real pytest run: times recorded after the run, and a
    budget that keeps the quickest known tests plus every test without a record."""
    (tmp_path / "test_sample.py").write_text(
        "import time\n"
        "def test_quick(): pass\n"
        "def test_medium(): time.sleep(0.3)\n"
        "def test_slow(): time.sleep(0.6)\n")
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps({"test_sample.py::test_quick": 0.01,
                                     "test_sample.py::test_medium": 0.3,
                                     "test_sample.py::test_slow": 0.6}))
    code = ("import sys, pathlib, pytest, dev; dev.DURATIONS = pathlib.Path(sys.argv[1]); "
            "sys.exit(pytest.main(sys.argv[2:], plugins=[dev]))")  # pytest first: the hooks
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(*args):
        return subprocess.run([sys.executable, "-c", code, str(durations), "-p", "no:cacheprovider",
                               "-p", "no:xdist", "-q", "-rN", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=DEADLINE_S)

    out = run("--time-budget=0.5", "test_sample.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed, 1 deselected" in out.stdout, out.stdout
    (tmp_path / "test_sample.py").write_text(
        (tmp_path / "test_sample.py").read_text() + "def test_new(): pass\n")
    out = run("--time-budget=0.05", "test_sample.py")
    assert "2 passed, 2 deselected" in out.stdout, out.stdout  # quick + new (no record)
    times = json.loads(durations.read_text())
    assert set(times) == {f"test_sample.py::test_{n}" for n in ("quick", "medium", "slow", "new")}
    assert times["test_sample.py::test_slow"] == 0.6  # kept from before: it did not run
