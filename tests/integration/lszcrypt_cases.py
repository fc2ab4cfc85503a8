"""The lszcrypt comparison cases (``tests/data/lszcrypt/cases.toml``) and their recordings.

Shared by ``scripts/capture-lszcrypt`` (which records what s390-tools' lszcrypt prints) and
``test_lszcrypt.py`` (which checks that ``scripts/lszcrypt`` prints the same).  A recording is
a case's stdout (``<host>/<case>.out``, gzipped as ``.out.gz`` when large), its exit status and
its stderr (``<host>/results.json``); the mount's path in stderr reads ``$SYSFS_ROOT``, so a
recording does not depend on where the tree was mounted.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "lszcrypt"
SCRIPT = REPO / "scripts" / "lszcrypt"
GZIP_ABOVE = 256 * 1024
"""Outputs larger than this are stored gzipped (the 256x256 listing is 3 MB of text)."""
SYSFS_ROOT_MARK = "$SYSFS_ROOT"


@dataclass(frozen=True)
class Case:
    command_line: str

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command_line)

    @property
    def name(self) -> str:
        """``lszcrypt_-c_05``: the file name of the case's recording, without extension."""
        return "_".join(["lszcrypt", *self.args])


@dataclass(frozen=True)
class Host:
    name: str
    config: str
    setup: tuple[str, ...]
    cases: tuple[Case, ...]

    @property
    def config_text(self) -> str | None:
        """The host TOML's text, None for apfs's embedded default host."""
        return (DATA / "hosts" / self.config).read_text() if self.config else None

    @property
    def directory(self) -> Path:
        return DATA / self.name


@dataclass(frozen=True)
class Result:
    stdout: bytes
    status: int
    stderr: str


def load_hosts() -> list[Host]:
    manifest = tomllib.loads((DATA / "cases.toml").read_text())
    return [Host(h["name"], h["config"], tuple(h["setup"]), tuple(Case(c) for c in h["cases"]))
            for h in manifest["host"]]


def run_setup(host: Host, root: Path) -> None:
    """The host's setup lines against the mount at ``root``; any failure is an error."""
    env = {**os.environ, "SYS": str(root / "sys"), "MNT": str(root)}
    for line in host.setup:
        done = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{host.name}: setup {line!r} failed: {done.stderr.strip()}")


def run_lszcrypt(program: list[str], args: list[str], sys_root: Path) -> Result:
    """``SYSFS_ROOT=sys_root PROGRAM ARGS``, with the tree's path in stderr made neutral."""
    env = {**os.environ, "SYSFS_ROOT": str(sys_root)}
    env.pop("POSIXLY_CORRECT", None)
    done = subprocess.run([*program, *args], env=env, capture_output=True, timeout=600)
    stderr = done.stderr.decode("latin-1").replace(str(sys_root), SYSFS_ROOT_MARK)
    return Result(done.stdout, done.returncode, stderr)


def save(host: Host, results: dict[Case, Result]) -> None:
    """Replace ``host``'s recordings with ``results``."""
    host.directory.mkdir(parents=True, exist_ok=True)
    for old in host.directory.glob("*.out*"):
        old.unlink()
    index = {}
    for case, result in results.items():
        if len(result.stdout) > GZIP_ABOVE:
            data = gzip.compress(result.stdout, mtime=0)
            (host.directory / f"{case.name}.out.gz").write_bytes(data)
        else:
            (host.directory / f"{case.name}.out").write_bytes(result.stdout)
        index[case.command_line] = {"status": result.status, "stderr": result.stderr}
    (host.directory / "results.json").write_text(json.dumps(index, indent=1) + "\n")


def load(host: Host, case: Case) -> Result:
    """The recording of ``case`` on ``host``; KeyError/FileNotFoundError when never captured."""
    index = json.loads((host.directory / "results.json").read_text())
    entry = index[case.command_line]
    plain = host.directory / f"{case.name}.out"
    if plain.exists():
        stdout = plain.read_bytes()
    else:
        stdout = gzip.decompress((host.directory / f"{case.name}.out.gz").read_bytes())
    return Result(stdout, entry["status"], entry["stderr"])
