#!/usr/bin/env bash
# The upstream vfio_ap workflow of Linux's Documentation/arch/s390/vfio-ap.rst, run against a
# sysfs tree of the vfio_ap flavor (an `apfs mount --flavor vfio_ap` mount's sys/, or /sys
# on an s390 host): reserve APQNs for guests with apmask/aqmask, create two mediated
# devices, assign adapters and domains (decimal or 0x hex), show what each has and what its
# guest gets, then rewrite the first one's whole matrix through ap_config.
#
# usage: upstream-workflow.sh SYS
# The last two lines of stdout are `uuid1=<uuid>` and `uuid2=<uuid>` for the caller.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 SYS   (e.g. MOUNT/sys)" >&2; exit 2; }
SYS="$1"

run() {
    printf '+ %s\n' "$1"
    eval "$1" || { echo "upstream-workflow: failed: $1" >&2; exit 1; }
}

echo "# 1. Reserve adapter 5 and domains 4 and 0xab for guests (their queues move to vfio_ap)"
run 'cd "$SYS/bus/ap"'
run 'echo -0x5 > apmask'
run 'echo -4,-0xab > aqmask'
run 'ls drivers/vfio_ap'

echo "# 2. Create two mediated devices"
run 'cd "$SYS/devices/vfio_ap/matrix/mdev_supported_types/vfio_ap-passthrough"'
uuid1="$(uuidgen)" uuid2="$(uuidgen)"
run "echo $uuid1 > create"
run "echo $uuid2 > create"
run 'cat available_instances'

echo "# 3. Assign: adapter 5 x domains 4, 0xab to the first; adapter 6 x the same to the second"
run "cd \"\$SYS/devices/vfio_ap/matrix/$uuid1\""
run 'echo 5 > assign_adapter'
run 'echo 4 > assign_domain'
run 'echo 0xab > assign_domain'
run 'echo 4 > assign_control_domain'
run "cd \"\$SYS/devices/vfio_ap/matrix/$uuid2\""
run 'echo 6 > assign_adapter'
run 'echo 4 > assign_domain'
run 'echo 0xab > assign_domain'
for uuid in "$uuid1" "$uuid2"; do
    run "cd \"\$SYS/devices/vfio_ap/matrix/$uuid\""
    run 'cat matrix'
    run 'cat guest_matrix'
    run 'cat control_domains'
done

echo "# 4. Rewrite the first device's matrix at once: adapter 5 x domains 4, 0x47, 0xab, 0xff"
run "cd \"\$SYS/devices/vfio_ap/matrix/$uuid1\""
run 'cat ap_config'
run "echo 0x04,0x0800000000000000010000000000000000000000001000000000000000000001 > ap_config"
run 'cat matrix'
run 'cat guest_matrix'

echo "uuid1=$uuid1"
echo "uuid2=$uuid2"
