"""The SEV firmware in the mount (:mod:`apfs.sev.tree`)."""
