"""Where the vTPMs' files sit in the mount (the sysfs of a virtio TPM, apfs's controls)."""
