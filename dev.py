#!/usr/bin/env python3
"""One-command set-up for the workbench (needs only Python >= 3.11).

    python3 dev.py lab           # create .venv if needed, install, open JupyterLab on notebooks/
    python3 dev.py test          # create .venv if needed, install, run the whole test suite
    python3 dev.py test --fast   # the development loop: a few minutes at most (see below)

Extra arguments go to JupyterLab or pytest (``python3 dev.py test --fast -k pair``). The virtual
environment lives in ``.venv``; it is re-synchronised when pyproject.toml changes (an install
made for ``test`` serves ``lab`` too).

lab: JupyterLab runs in a session of its own. Ctrl-C, SIGTERM or SIGHUP sent to dev.py stop it:
it gets SIGTERM (and shuts its kernels down), then SIGKILL after 15 s or at a second signal. The
exit status is JupyterLab's, or 128 + the number of the signal that stopped it.

test: pytest on one pytest-xdist worker per core, up to 4 (``WORKBENCH_TEST_WORKERS=N`` to
choose; a file's tests, a notebook's cells, stay on one worker), over tests/ and the notebooks
(nbval). It sets, where the environment does not already (so you can override them):

    JAX_COMPILATION_CACHE_DIR=<repo>/.cache/jax     JAX's persistent compilation cache, shared by
                                                    every worker and notebook kernel and kept
                                                    between runs (a warm cache makes the tests
                                                    about 3x faster; delete the folder to reset)
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5  programs compiled faster are not cached
    WORKBENCH_NOTEBOOK_SMALL=1                      notebooks choose small systems and short runs
    WORKBENCH_CPU_DEVICES=auto                      one JAX CPU device per core

Each run records every test's time (setup + call + teardown) in ``.cache/test-durations.json``.

test --fast: the development loop. It leaves out the tests marked ``slow`` or ``browser`` and
the notebooks, and then keeps the quickest tests, by their recorded times, that fit in
``WORKBENCH_FAST_BUDGET_S`` seconds (default 75) per worker: about 2-3 minutes on two cores
with a warm compilation cache. Tests without a recorded time always run (new tests are what you
are working on). The first run after a fresh clone has no times yet and runs every unmarked
test (15-25 minutes on two cores); a full ``dev.py test`` records them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = {"lab": "lab", "test": "lab,test"}
CACHE = ROOT / ".cache"
DURATIONS = CACHE / "test-durations.json"
FAST_BUDGET_S = 75.0
LAB_GRACE_S = 15.0
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def _stamp_extras(stamp: Path) -> set[str]:
    return set(stamp.name.split("-")[1:-1])  # .installed-lab-test-<digest> -> {lab, test}


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"workbench needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PY.exists():
        say(f"creating virtual environment in {VENV}")
        run([sys.executable, "-m", "venv", str(VENV)])
        run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wanted = set(extras.split(","))
    if any(wanted <= _stamp_extras(s) for s in VENV.glob(f".installed-*-{digest}")):
        return  # installed for this pyproject.toml with these extras (or more)
    say(f"installing workbench[{extras}] into .venv (first run takes a few minutes)")
    run([str(PY), "-m", "pip", "install", "-q", "-e", f".[{extras}]"], cwd=ROOT)
    for old in VENV.glob(f".installed-{extras.replace(',', '-')}-*"):
        old.unlink()
    (VENV / f".installed-{extras.replace(',', '-')}-{digest}").touch()


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> None:
    """The browser test drives Debian's Chromium; install it when we can (root + apt)."""
    if chromium():
        return
    if os.name != "nt" and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Chromium for the browser test (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False)
    if not chromium():
        say("Chromium not found: the browser test will be skipped (install Debian's 'chromium')")


def run_until_signalled(cmd: list[str], grace: float, **popen) -> int:
    """Run ``cmd`` in a session of its own and wait for it. SIGINT, SIGTERM or SIGHUP received
    meanwhile stop it: SIGTERM to its process group, SIGKILL after ``grace`` seconds or at a
    second signal. Returns its exit status, or 128 + the first signal's number. (The same as
    ``workbench.cli.run_until_signalled``: this file runs before workbench is installed.)"""
    if os.name == "nt":
        try:
            return subprocess.call(cmd, **popen)
        except KeyboardInterrupt:
            return 130
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    received: list[int] = []
    timer = threading.Timer(grace, lambda: _signal_group(proc.pid, signal.SIGKILL))
    timer.daemon = True

    def stop(signum, frame):
        received.append(signum)
        if len(received) == 1:
            _signal_group(proc.pid, signal.SIGTERM)
            timer.start()
        else:
            _signal_group(proc.pid, signal.SIGKILL)

    names = STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, stop) for s in
                (getattr(signal, name) for name in names if hasattr(signal, name))}
    try:
        status = proc.wait()
    finally:
        timer.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        _signal_group(proc.pid, signal.SIGKILL)  # anything left in its group
        return 128 + received[0]
    return status if status >= 0 else 128 - status


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def _is_path(arg: str) -> bool:
    """A test path or node id (tests/test_cli.py::test_version), not an option or its value."""
    return not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists()


def lab(args: list[str]) -> int:
    ensure_venv(EXTRAS["lab"])
    cmd = [str(PY), "-m", "workbench.cli", "lab", *args]
    say("starting JupyterLab on notebooks/ (Ctrl-C to stop)")
    return run_until_signalled(cmd, LAB_GRACE_S, cwd=ROOT)


def test(args: list[str]) -> int:
    ensure_venv(EXTRAS["test"])
    fast = "--fast" in args
    args = [a for a in args if a != "--fast"]
    if not fast:
        ensure_chromium()
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg")
    env.setdefault("WORKBENCH_CPU_DEVICES", "auto")  # one CPU device per core, as `workbench lab`
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE / "jax"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    env.setdefault("WORKBENCH_NOTEBOOK_SMALL", "1")
    CACHE.mkdir(exist_ok=True)
    # this file is also a pytest plugin (below): it records test times, and --fast uses them
    cmd = [str(PY), "-m", "pytest", "-p", "dev", "-p", "no:cacheprovider", "--nbval-lax"]
    if not any(_is_path(a) for a in args):  # paths given replace the default ones
        cmd += ["tests"] if fast else ["tests", "notebooks"]
    workers = int(os.environ.get("WORKBENCH_TEST_WORKERS", min(os.cpu_count() or 1, 4)))
    if fast:
        budget = float(os.environ.get("WORKBENCH_FAST_BUDGET_S", FAST_BUDGET_S))
        cmd += ["-m", "not slow and not browser", f"--time-budget={budget * max(workers, 1):g}"]
    if workers > 1 and not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # one pytest worker per core (up to 4): most tests wait on XLA's single-threaded
        # compiler, so two workers on two cores finish the suite about 1.5x sooner
        cmd += ["-n", str(workers), "--dist", "loadfile"]
    cmd += args
    say(" ".join(cmd[2:]))
    return subprocess.call(cmd, cwd=ROOT, env=env)


# ------------------------------------------------------------------ pytest plugin (``-p dev``)
# `dev.py test` loads this module into pytest: it records each test's time in DURATIONS, and
# --time-budget (what --fast passes) keeps the quickest tests that fit. pytest-xdist workers
# load it too; only the controller (or a run without workers) writes the file. The hooks are
# defined only inside pytest: dev.py itself runs before pytest is installed.

def _recorded() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


if "pytest" in sys.modules:
    import pytest

    _times: dict[str, float] = {}  # this run's times, by node id
    _had_times = [False]

    def pytest_addoption(parser) -> None:
        parser.addoption("--time-budget", type=float, default=None, metavar="SECONDS",
                         help="keep the quickest tests (by their times recorded in "
                              f"{DURATIONS}) whose times add up to at most "
                              "SECONDS; tests without a recorded time always run")

    def pytest_configure(config) -> None:
        _had_times[0] = bool(_recorded())

    @pytest.hookimpl(trylast=True)  # after -m and -k have deselected theirs
    def pytest_collection_modifyitems(config, items) -> None:
        budget = config.getoption("--time-budget")
        if budget is None:
            return
        times = _recorded()
        known = sorted((i for i in items if i.nodeid in times),
                       key=lambda i: (times[i.nodeid], i.nodeid))
        total, over = 0.0, set()
        for item in known:
            total += times[item.nodeid]
            if total > budget:
                over.add(item.nodeid)
        if over:
            config.hook.pytest_deselected(items=[i for i in items if i.nodeid in over])
            items[:] = [i for i in items if i.nodeid not in over]

    def pytest_runtest_logreport(report) -> None:
        _times[report.nodeid] = _times.get(report.nodeid, 0.0) + float(report.duration)

    def pytest_sessionfinish(session) -> None:
        if hasattr(session.config, "workerinput") or not _times:
            return  # an xdist worker: the controller gets its reports and writes the file
        times = _recorded()
        times.update({k: round(v, 3) for k, v in _times.items()})
        DURATIONS.parent.mkdir(exist_ok=True)
        tmp = DURATIONS.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(times, indent=0, sort_keys=True))
        os.replace(tmp, DURATIONS)

    def pytest_terminal_summary(terminalreporter, config) -> None:
        budget = config.getoption("--time-budget")
        if budget is None:
            return
        if _had_times[0]:
            terminalreporter.write_line(
                f"[dev] ran the quickest recorded tests within {budget:g} s and every test "
                "without a recorded time; the rest, the slow and browser tests and the notebooks "
                "run in `python3 dev.py test`")
        else:
            terminalreporter.write_line(
                f"[dev] no recorded test times yet ({DURATIONS}): this run "
                "took every unmarked test; the next one keeps to the time budget")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("lab", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return {"lab": lab, "test": test}[command](rest)


if __name__ == "__main__":
    sys.exit(main())
