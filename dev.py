#!/usr/bin/env python3
"""One-command set-up for the workbench (needs only Python >= 3.11).

    python3 dev.py lab     # create .venv if needed, install, open JupyterLab on notebooks/
    python3 dev.py test    # create .venv if needed, install, run the whole test suite

Extra arguments go to JupyterLab or pytest. The virtual environment lives in ``.venv``; it is
re-synchronised when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = {"lab": "lab", "test": "lab,test"}


def say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"workbench needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PY.exists():
        say(f"creating virtual environment in {VENV}")
        run([sys.executable, "-m", "venv", str(VENV)])
        run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extras.replace(',', '-')}-{digest}"
    if stamp.exists():
        return
    say(f"installing workbench[{extras}] into .venv (first run takes a few minutes)")
    run([str(PY), "-m", "pip", "install", "-q", "-e", f".[{extras}]"], cwd=ROOT)
    for old in VENV.glob(f".installed-{extras.replace(',', '-')}-*"):
        old.unlink()
    stamp.touch()


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


def lab(args: list[str]) -> int:
    ensure_venv(EXTRAS["lab"])
    cmd = [str(PY), "-m", "workbench.cli", "lab", *args]
    say("starting JupyterLab on notebooks/ (Ctrl-C to stop)")
    return subprocess.call(cmd, cwd=ROOT)


def test(args: list[str]) -> int:
    ensure_venv(EXTRAS["test"])
    ensure_chromium()
    env = dict(os.environ, PYTHONHASHSEED="0", MPLBACKEND="Agg")
    env.setdefault("WORKBENCH_CPU_DEVICES", "auto")  # one CPU device per core, as `workbench lab`
    cmd = [str(PY), "-m", "pytest", "tests", "notebooks", "--nbval-lax", "-p", "no:cacheprovider"]
    workers = int(os.environ.get("WORKBENCH_TEST_WORKERS", min(os.cpu_count() or 1, 4)))
    if workers > 1 and not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # one pytest worker per core (up to 4): most tests wait on XLA's single-threaded
        # compiler, so two workers on two cores finish the suite about 1.5x sooner
        cmd += ["-n", str(workers), "--dist", "loadfile"]
    cmd += args
    say(" ".join(cmd[2:]))
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("lab", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return {"lab": lab, "test": test}[command](rest)


if __name__ == "__main__":
    sys.exit(main())
