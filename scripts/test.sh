#!/usr/bin/env bash
# The CI entry point: set up, lint, run the test suite, then check that no test left an
# apfs FUSE mount behind. Extra arguments go to pytest (e.g. -k, -x, a test path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# Everything this run creates lives under one directory of its own (pytest's basetemp and
# apfs.testing's mount points follow TMPDIR), so the leak check below sees only this run's
# mounts, even with other runs on the machine at the same time.
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/apfs-test.XXXXXX")"
chmod 755 "$RUN_TMP"  # the tests that run commands as `nobody` must reach their mounts
export TMPDIR="$RUN_TMP"

# Our mounts have fsname `apfs` (first /proc/mounts field), type `fuse` or `fuse.apfs`;
# the second field is the mount point (octal escapes for spaces and the like).
apfs_mounts() {
    grep -E '^apfs [^ ]+ fuse(\.apfs)? ' /proc/mounts | awk -v dir="$RUN_TMP/" \
        'index($2, dir) == 1' || true
}

status=0
echo "test: ruff check"
# ruff discovers only *.py files; the extension-less Python scripts are found by their shebang.
mapfile -t python_scripts < <(grep -l '^#!/usr/bin/env python3' scripts/*)
.venv/bin/ruff check . "${python_scripts[@]}" || status=1

echo "test: pytest"
pytest_status=0
.venv/bin/python -m pytest -q "$@" || pytest_status=$?
if ((pytest_status == 5)); then
    echo "test: error: pytest collected no tests" >&2
    status=1
elif ((pytest_status != 0)); then
    status=1
fi

leaked="$(apfs_mounts)"
if [[ -n "$leaked" ]]; then
    printf 'test: error: apfs mounts left behind:\n%s\n' "$leaked" >&2
    status=1
else
    rm -rf "$RUN_TMP"
fi

if ((status == 0)); then
    echo "test: OK"
else
    echo "test: FAILED" >&2
fi
exit "$status"
