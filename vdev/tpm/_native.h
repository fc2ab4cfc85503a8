/* The C side of vdev.tpm._native (FifoLock, Cell) for other extensions (apfs/tpm/_pump.c).
 * Import the vdev.tpm._native module, then PyCapsule_Import(NATIVE_API_CAPSULE, 0). */
#ifndef VDEV_TPM_NATIVE_H
#define VDEV_TPM_NATIVE_H

#include <Python.h>

#define NATIVE_API_CAPSULE "vdev.tpm._native._C_API"

typedef struct {
    PyObject_HEAD
    long value; /* read and written with __atomic_*_n, relaxed */
} NativeCell;

static inline long cell_value(PyObject *cell)
{
    return __atomic_load_n(&((NativeCell *)cell)->value, __ATOMIC_RELAXED);
}

static inline void cell_set(PyObject *cell, long value)
{
    __atomic_store_n(&((NativeCell *)cell)->value, value, __ATOMIC_RELAXED);
}

struct NativeApi {
    PyTypeObject *lock_type;
    PyTypeObject *cell_type;
    /* 1: taken (it was free and nobody waited); 0: not taken.  No GIL needed. */
    int (*try_acquire)(PyObject *lock);
    /* 0, or -1 when it was not held.  No GIL needed. */
    int (*release)(PyObject *lock);
};

#endif
