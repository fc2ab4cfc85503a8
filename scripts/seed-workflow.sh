#!/usr/bin/env bash
# Steps 1-4 of the AP matrix document's "Example: Configure AP Matrices for Two Linux
# Guests", run against a sysfs tree (an apfs mount's sys/ directory, or /sys itself).
# The command lines are the seed's own, with /sys replaced by "$SYS".
#
# usage: seed-workflow.sh SYS
# The last two lines of stdout are `uuid1=<uuid>` and `uuid2=<uuid>` for the caller.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 SYS   (e.g. MOUNT/sys)" >&2; exit 2; }
SYS="$1"

# Show each command, redirection included (set -x would drop the `> unbind`), then run it.
run() {
    printf '+ %s\n' "$1"
    eval "$1" || { echo "seed-workflow: failed: $1" >&2; exit 1; }
}

# mdev names in the type's devices/ directory. The `<uuid>:` aliases are not listed by
# readdir, but filter on the UUID shape anyway so only real devices count.
mdevs() {
    local names
    names="$(ls devices)"
    grep -E '^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$' <<<"$names" || true
}

# `uuidgen > create`, then find the new device as the set difference of devices/ before
# and after (listing order says nothing about which one is new). Sets $new_mdev.
create_mdev() {
    local before after
    before="$(mdevs)"
    run 'uuidgen > create'
    after="$(mdevs)"
    new_mdev="$(comm -13 <(sort <<<"$before") <(sort <<<"$after") | sed '/^$/d')"
    [[ -n "$new_mdev" && $(wc -l <<<"$new_mdev") -eq 1 ]] || {
        echo "seed-workflow: expected one new mdev in devices/, got: '$new_mdev'" >&2
        exit 1
    }
}

echo "# 1. Unbind the AP queues from the cex4queue driver"
run 'cd "$SYS/bus/ap/drivers/cex4queue"'
run 'echo 05.0004 > unbind'
run 'echo 05.00ab > unbind'
run 'echo 05.0047 > unbind'
run 'echo 05.00ff > unbind'
run 'echo 06.0004 > unbind'
run 'echo 06.00ab > unbind'

echo "# 2. Bind them to the vfio_ap_matrix driver"
run 'cd "$SYS/bus/ap/drivers/vfio_ap_matrix"'
echo '# For Guest1:'
run 'echo 05.0004 > bind'
run 'echo 05.00ab > bind'
run 'echo 06.0004 > bind'
run 'echo 06.00ab > bind'
echo '# For Guest2:'
run 'echo 05.0047 > bind'
run 'echo 05.00ff > bind'

echo "# 3. Create the two mediated matrix devices"
run 'cd "$SYS/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix-passthrough"'
create_mdev
uuid1="$new_mdev"
create_mdev
uuid2="$new_mdev"
echo "# created uuid1=$uuid1 uuid2=$uuid2"

echo "# 4. Configure the matrices"
echo '# For Guest1:'
run 'cd "$SYS"/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix_passthrough'
run "cd ./devices/$uuid1:"
run 'echo 5 > assign_adapter'
run 'echo 6 > assign_adapter'
run 'echo 4 > assign_domain'
run 'echo ab > assign_domain'
echo '# For Guest2:'
run 'cd "$SYS"/devices/ap_matrix/matrix/mdev_supported_types/ap_matrix_passthrough'
run "cd ./devices/$uuid2:"
run 'echo 5 > assign_adapter'
run 'echo 47 > assign_domain'
run 'echo ff > assign_domain'

echo "# Result"
for uuid in "$uuid1" "$uuid2"; do
    for attr in adapters domains control_domains; do
        printf '%s/%s:\n' "$uuid" "$attr"
        sed 's/^/    /' "$SYS/devices/ap_matrix/matrix/$uuid/$attr"
    done
done
for drv in cex4queue vfio_ap_matrix; do
    printf '%s: %s\n' "$drv" \
        "$(ls "$SYS/bus/ap/drivers/$drv" | grep -E '^[0-9a-f]{2}\.[0-9a-f]{4}$' | paste -sd' ')"
done

echo "uuid1=$uuid1"
echo "uuid2=$uuid2"
