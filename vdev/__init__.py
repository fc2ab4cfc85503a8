"""Sans-IO device emulators.

Everything under ``vdev`` is a plain Python state machine: strings or bytes in, strings or
bytes out, typed errors carrying the kernel errno.  Nothing here knows about FUSE, trio,
sockets or files; the ``apfs`` package is the only place that does I/O.
"""
