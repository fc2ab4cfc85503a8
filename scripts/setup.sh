#!/usr/bin/env bash
# Prepare a Debian 12 machine for apfs: system packages, then .venv with apfs[test].
# Idempotent and quick on a second run: apt runs only for missing packages, pip only
# when pyproject.toml or a C extension's source changed since the last successful install
# (pip builds the extensions in place, next to their sources).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.apfs-install-stamp"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# pyfuse3 is an sdist: it builds against libfuse3 with pkg-config and a C compiler;
# fuse3 brings fusermount3; uuid-runtime brings uuidgen (the seed's `uuidgen > create`);
# mdevctl (Debian 12: 1.2.0, with udev) is what the interop tests drive through `apfs run`;
# libtpms0 is the TPM 2.0 behind vdev.tpm (loaded with ctypes); the vTPM's interop tests
# drive it with tpm2-tools (and its swtpm, mssim and device TCTIs), compare it with swtpm,
# boot SeaBIOS in qemu-system-x86 against it, and build tpm2-pytss against libtss2-dev.
PACKAGES=(fuse3 libfuse3-dev pkg-config uuid-runtime gcc python3-venv python3-dev mdevctl
          libtpms0 tpm2-tools libtss2-tcti-device0 libtss2-tcti-mssim0 libtss2-tcti-swtpm0
          libtss2-dev swtpm qemu-system-x86 seabios)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; run as root or:
    sudo apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[[ -c /dev/fuse ]] || die "/dev/fuse is missing. Load the module with 'modprobe fuse'
    (in a container: run it with --device /dev/fuse --cap-add SYS_ADMIN)."

command -v python3 >/dev/null || die "python3 not found on PATH"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "python3 >= 3.11 required, found $(python3 --version 2>&1) at $(command -v python3)"

# A venv is broken when its interpreter is gone (e.g. the pyenv version it was made
# from was removed) or is too old; recreate it from scratch then.
if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "creating $VENV with $(python3 --version) ($(command -v python3))"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi

hash="$(cat "$ROOT/pyproject.toml" "$ROOT"/vdev/tpm/_native.[ch] "$ROOT"/apfs/tpm/_pump.c |
        sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$hash" ]]; then
    say "installing apfs[test] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    echo "$hash" >"$STAMP"
else
    say "up to date ($VENV)"
fi
