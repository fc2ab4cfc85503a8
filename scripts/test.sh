#!/usr/bin/env bash
# The CI entry point: set up, lint, run the test suite, then check that no test left an
# apfs FUSE mount behind. Extra arguments go to pytest (e.g. -k, -x, a test path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# Our mounts have fsname `apfs` (first /proc/mounts field), type `fuse` or `fuse.apfs`.
apfs_mounts() { grep -E '^apfs [^ ]+ fuse(\.apfs)? ' /proc/mounts || true; }
mounts_before="$(apfs_mounts)"

status=0
echo "test: ruff check"
# ruff discovers only *.py files; the extension-less Python scripts are named explicitly.
.venv/bin/ruff check . scripts/bench-attr scripts/bench-scale scripts/bench-memory scripts/bench-state scripts/bench-tpm || status=1

echo "test: pytest"
pytest_status=0
.venv/bin/python -m pytest -q "$@" || pytest_status=$?
if ((pytest_status == 5)); then
    echo "test: error: pytest collected no tests" >&2
    status=1
elif ((pytest_status != 0)); then
    status=1
fi

# Only mounts that appeared during this run count: a developer's own mount is not a leak.
leaked="$(comm -13 <(sort <<<"$mounts_before") <(apfs_mounts | sort) | sed '/^$/d')"
if [[ -n "$leaked" ]]; then
    printf 'test: error: apfs mounts left behind:\n%s\n' "$leaked" >&2
    status=1
fi

if ((status == 0)); then
    echo "test: OK"
else
    echo "test: FAILED" >&2
fi
exit "$status"
