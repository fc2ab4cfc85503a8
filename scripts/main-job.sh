#!/usr/bin/env bash
# The main job: mount the default host, run the AP matrix document's two-guest example
# (steps 1-4 through scripts/seed-workflow.sh, then steps 5 and 6 through the guests
# directory), show what each guest sees and the kernel-style log, and unmount.  Then the
# same host in the upstream vfio_ap flavor: vfio-ap.rst's workflow through
# scripts/upstream-workflow.sh and a guest started on its first device.
# Between the two: the vTPM, extended with tpm2-tools through dev/tpmrm0 and read in sysfs.
# Exits non-zero on any failure, including guests that do not see the expected APQNs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

WORK="$(mktemp -d -t apfs-main-job.XXXXXX)"
MNT="$WORK/mnt"
VFIO="$WORK/vfio"
mkdir "$MNT" "$VFIO"

is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

cleanup() {
    for mnt in "$MNT" "$VFIO"; do
        if is_mounted "$mnt"; then
            .venv/bin/apfs umount "$mnt" || fusermount3 -u -z "$mnt" || true
        fi
    done
    # rmdir, not rm -rf: should the unmount have failed, never recurse into a live mount.
    rm -f "$WORK/seed.out" "$WORK/upstream.out"
    rmdir "$MNT" "$VFIO" "$WORK" 2>/dev/null || echo "main-job: could not remove $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "+ apfs mount $MNT"
.venv/bin/apfs mount "$MNT"

bash scripts/seed-workflow.sh "$MNT/sys" | tee "$WORK/seed.out"
uuid1="$(sed -n 's/^uuid1=//p' "$WORK/seed.out")"
uuid2="$(sed -n 's/^uuid2=//p' "$WORK/seed.out")"
[[ -n "$uuid1" && -n "$uuid2" ]] || { echo "main-job: seed-workflow gave no uuids" >&2; exit 1; }

# Steps 5 and 6: the QEMU -device argument, written where apfs starts guests.
for uuid in "$uuid1" "$uuid2"; do
    echo "+ echo \"vfio_ap_matrix,sysfsdev=/sys/devices/ap_matrix/matrix/$uuid\" > \$MNT/apfs/guests/start"
    echo "vfio_ap_matrix,sysfsdev=/sys/devices/ap_matrix/matrix/$uuid" >"$MNT/apfs/guests/start"
done

for guest in 1 2; do
    var="uuid$guest"
    dir="$MNT/apfs/guests/${!var}"
    for file in lszcrypt apqns crycb; do
        echo "== Guest$guest ($file)"
        cat "$dir/$file"
    done
done

# The host as s390-tools' lszcrypt shows it, then each guest's lszcrypt (scripts/lszcrypt).
echo "+ SYSFS_ROOT=\$MNT/sys scripts/lszcrypt -V"
SYSFS_ROOT="$MNT/sys" scripts/lszcrypt -V
for guest in 1 2; do
    var="uuid$guest"
    echo "+ SYSFS_ROOT=\$MNT/sys scripts/lszcrypt --guest \$$var"
    SYSFS_ROOT="$MNT/sys" scripts/lszcrypt --guest "${!var}"
done

# The APQNs the seed's lszcrypt tables show for each guest.
check_apqns() {
    local got
    got="$(sort "$MNT/apfs/guests/$1/apqns" | paste -sd' ')"
    [[ "$got" == "$2" ]] || { echo "main-job: $3 has APQNs '$got', expected '$2'" >&2; exit 1; }
}
check_apqns "$uuid1" "05.0004 05.00ab 06.0004 06.00ab" Guest1
check_apqns "$uuid2" "05.0047 05.00ff" Guest2

# The default host's vTPM (seed 002's virtio TPM, libtpms behind it) as a guest uses it:
# tpm2-tools through the resource manager's character device, then the same PCR in sysfs.
digest="$(printf 'apfs main job' | sha256sum | cut -d' ' -f1)"
expected="$(python3 -c 'import hashlib, sys; print(hashlib.sha256(bytes(32) + bytes.fromhex(sys.argv[1])).hexdigest().upper())' "$digest")"
export TPM2TOOLS_TCTI="device:$MNT/dev/tpmrm0"
echo "+ TPM2TOOLS_TCTI=device:\$MNT/dev/tpmrm0 tpm2_pcrextend 16:sha256=$digest"
tpm2_getrandom --hex 16 >/dev/null
tpm2_pcrextend "16:sha256=$digest"
tpm2_pcrread sha256:16
echo "+ cat \$MNT/sys/class/tpm/tpm0/pcr-sha256/16"
got="$(cat "$MNT/sys/class/tpm/tpm0/pcr-sha256/16")"
echo "$got"
[[ "$got" == "$expected" ]] || { echo "main-job: PCR 16 is $got, expected $expected" >&2; exit 1; }

echo "== apfs/log"
cat "$MNT/apfs/log"

echo "+ apfs umount $MNT"
.venv/bin/apfs umount "$MNT"

echo "+ apfs mount --flavor vfio_ap $VFIO"
.venv/bin/apfs mount --flavor vfio_ap "$VFIO"
bash scripts/upstream-workflow.sh "$VFIO/sys" | tee "$WORK/upstream.out"
uuid1="$(sed -n 's/^uuid1=//p' "$WORK/upstream.out")"
[[ -n "$uuid1" ]] || { echo "main-job: upstream-workflow gave no uuids" >&2; exit 1; }
echo "+ echo \"vfio-ap,sysfsdev=/sys/bus/mdev/devices/$uuid1\" > \$VFIO/apfs/guests/start"
echo "vfio-ap,sysfsdev=/sys/bus/mdev/devices/$uuid1" >"$VFIO/apfs/guests/start"
echo "== guest on $uuid1 (lszcrypt)"
cat "$VFIO/apfs/guests/$uuid1/lszcrypt"
echo "+ SYSFS_ROOT=\$VFIO/sys scripts/lszcrypt -V"
SYSFS_ROOT="$VFIO/sys" scripts/lszcrypt -V
echo "+ SYSFS_ROOT=\$VFIO/sys scripts/lszcrypt --guest \$uuid1"
SYSFS_ROOT="$VFIO/sys" scripts/lszcrypt --guest "$uuid1"
check_vfio() {
    local got
    got="$(paste -sd' ' "$VFIO/apfs/guests/$uuid1/apqns")"
    [[ "$got" == "05.0004 05.0047 05.00ab 05.00ff" ]] ||
        { echo "main-job: the vfio_ap guest has APQNs '$got'" >&2; exit 1; }
}
check_vfio
echo "+ apfs umount $VFIO"
.venv/bin/apfs umount "$VFIO"
echo "main-job: OK"
