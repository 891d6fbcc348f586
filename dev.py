#!/usr/bin/env python3
"""The project's two entry points for a fresh machine: ``python3 dev.py up`` and ``python3 dev.py test``.

Needs only Python >= 3.11 and pip. Creates ``.venv`` beside this file on first use, installs the
project with its development tools into it (again whenever ``pyproject.toml`` changes), then:

* ``up [ARGS...]``   runs ``streetlight up`` (the whole system; embedded broker and database
  when ``MQTT_URL`` / ``DATABASE_URL`` are not set);
* ``test [ARGS...]`` runs ruff, mypy and pytest; extra arguments go to pytest;
* ``run CMD [ARGS...]`` runs any ``streetlight`` sub-command in the environment.

Standard library only: this file must run before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("STREETLIGHT_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".streetlight-installed"


def _say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str | Path], **kw: object) -> int:
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)  # type: ignore[call-overload]


def _create_venv() -> None:
    _say(f"creating virtual environment in {VENV}")
    try:
        import venv

        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        if PY.exists() and _run([PY, "-m", "pip", "--version"], stdout=subprocess.DEVNULL) == 0:
            return
    except Exception as exc:  # ensurepip is missing on some distributions' Pythons
        _say(f"venv with pip failed ({exc}); falling back to virtualenv")
    if _run([sys.executable, "-m", "pip", "install", "--user", "--quiet", "virtualenv"]) != 0:
        sys.exit("[dev] cannot create a virtual environment: neither venv+ensurepip nor virtualenv work")
    if _run([sys.executable, "-m", "virtualenv", "--clear", VENV]) != 0:
        sys.exit("[dev] virtualenv failed")


def ensure_env() -> None:
    """Create .venv and (re)install the project when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 -- this file runs before the venv exists
        sys.exit(f"[dev] Python >= 3.11 is needed, this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not PY.exists():
        _create_venv()
    _say("installing the project and its tools (first run takes a minute)")
    quiet = [] if os.environ.get("DEV_VERBOSE") else ["--quiet"]
    rc = _run([PY, "-m", "pip", "install", *quiet, "--disable-pip-version-check", "-e", ".[dev]"])
    if rc != 0:
        sys.exit(f"[dev] pip install failed with status {rc}")
    STAMP.write_text(want)


def _ensure_browser() -> None:
    """Install Debian's chromium for the console tests when we can (root + apt); say so when we cannot."""
    have_fonts = Path("/usr/share/fonts/opentype/noto").is_dir()  # Korean labels in screenshots
    if (shutil.which("chromium") or shutil.which("chromium-browser")) and have_fonts:
        return
    if os.environ.get("STREETLIGHT_NO_APT") or not shutil.which("apt-get") or os.geteuid() != 0:
        _say("no chromium on PATH and no way to install it: browser tests will skip (not under CI=true)")
        return
    _say("installing chromium for the console tests (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.call(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    subprocess.call(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium", "fonts-noto-cjk"],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def cmd_test(args: list[str]) -> int:
    ensure_env()
    if (ROOT / "tests" / "e2e").is_dir() and any((ROOT / "tests" / "e2e").glob("test_*.py")):
        _ensure_browser()
    steps: list[tuple[str, list[str | Path]]] = [
        ("ruff", [BIN / "ruff", "check", "."]),
        ("ruff format", [BIN / "ruff", "format", "--check", "."]),
        ("mypy", [BIN / "mypy"]),
    ]
    for name, cmd in steps:
        _say(f"{name} ...")
        rc = _run(cmd)
        if rc != 0:
            _say(f"{name} failed (status {rc})")
            return rc
    _say("pytest ...")
    rc = _run([PY, "-m", "pytest", *args])
    if rc == 5:  # pytest: no tests collected; never a silent green
        _say("pytest collected no tests")
        return 1
    return rc


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "test":
        return cmd_test(rest)
    if cmd == "up":
        ensure_env()
        os.execv(str(BIN / "streetlight"), [str(BIN / "streetlight"), "up", *rest])
    if cmd == "run":
        ensure_env()
        os.execv(str(BIN / "streetlight"), [str(BIN / "streetlight"), *rest])
    print(f"unknown command {cmd!r}; use 'up', 'test' or 'run'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
