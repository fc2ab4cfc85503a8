"""The sysfs trees of the s390 AP bus and its passthrough flavors, declared over vdev.ap."""
