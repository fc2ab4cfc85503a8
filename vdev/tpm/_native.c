/* The parts of a vTPM that C reads without the GIL: its FIFO lock and its state cells.
 *
 * Why C: the swtpm data path of apfs (apfs/tpm/_pump.c) serves a TPM command without
 * running Python.  It must take the same lock every Python caller of the TPM takes (the
 * FUSE nodes, the resource manager, the control channel), and look at the state under
 * which Python would serve the command the same way (powered on, locality 0, ...), both
 * without the GIL.
 *
 * FifoLock(): a ticket lock, granted in the order it was asked for.  try_acquire() -> bool
 * (never waits: False while held or while anybody waits), acquire() (waits its turn with
 * the GIL released), release(), busy, waiting (how many wait).
 * Cell(value=0): one integer, written by Python (cell.value = 1), read by C.
 * C sees both through the capsule vdev.tpm._native._C_API (struct NativeApi, _native.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>

#include "_native.h"

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    pthread_cond_t turn;
    unsigned long long next;    /* the ticket the next caller gets */
    unsigned long long serving; /* the ticket that holds the lock, when next != serving */
} FifoLock;

/* -- FifoLock ------------------------------------------------------------------------ */

static int fifo_try_acquire(PyObject *self)
{
    FifoLock *lock = (FifoLock *)self;
    int taken = 0;
    pthread_mutex_lock(&lock->mutex);
    if (lock->next == lock->serving) {
        lock->next++;
        taken = 1;
    }
    pthread_mutex_unlock(&lock->mutex);
    return taken;
}

static void fifo_wait_turn(FifoLock *lock)
{
    pthread_mutex_lock(&lock->mutex);
    unsigned long long ticket = lock->next++;
    while (lock->serving != ticket)
        pthread_cond_wait(&lock->turn, &lock->mutex);
    pthread_mutex_unlock(&lock->mutex);
}

/* 0, or -1 when the lock is not held (a caller's bug; nothing changes). */
static int fifo_release(PyObject *self)
{
    FifoLock *lock = (FifoLock *)self;
    int held;
    pthread_mutex_lock(&lock->mutex);
    held = lock->next != lock->serving;
    if (held) {
        lock->serving++;
        if (lock->next != lock->serving)
            pthread_cond_broadcast(&lock->turn); /* waiters check whose turn it is */
    }
    pthread_mutex_unlock(&lock->mutex);
    return held ? 0 : -1;
}

static PyObject *FifoLock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "FifoLock() takes no arguments");
        return NULL;
    }
    FifoLock *lock = (FifoLock *)type->tp_alloc(type, 0);
    if (lock == NULL)
        return NULL;
    pthread_mutex_init(&lock->mutex, NULL);
    pthread_cond_init(&lock->turn, NULL);
    lock->next = lock->serving = 0;
    return (PyObject *)lock;
}

static void FifoLock_dealloc(FifoLock *lock)
{
    pthread_cond_destroy(&lock->turn);
    pthread_mutex_destroy(&lock->mutex);
    Py_TYPE(lock)->tp_free((PyObject *)lock);
}

static PyObject *FifoLock_try_acquire(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(fifo_try_acquire(self));
}

static PyObject *FifoLock_acquire(PyObject *self, PyObject *unused)
{
    if (!fifo_try_acquire(self)) {
        Py_BEGIN_ALLOW_THREADS
        fifo_wait_turn((FifoLock *)self);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *FifoLock_release(PyObject *self, PyObject *unused)
{
    if (fifo_release(self) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "FifoLock.release: the lock is not held");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *FifoLock_busy(PyObject *self, void *closure)
{
    FifoLock *lock = (FifoLock *)self;
    pthread_mutex_lock(&lock->mutex);
    int busy = lock->next != lock->serving;
    pthread_mutex_unlock(&lock->mutex);
    return PyBool_FromLong(busy);
}

static PyObject *FifoLock_waiting(PyObject *self, void *closure)
{
    FifoLock *lock = (FifoLock *)self;
    pthread_mutex_lock(&lock->mutex);
    unsigned long long waiting = lock->next == lock->serving ? 0 : lock->next - lock->serving - 1;
    pthread_mutex_unlock(&lock->mutex);
    return PyLong_FromUnsignedLongLong(waiting);
}

static PyMethodDef FifoLock_methods[] = {
    {"try_acquire", FifoLock_try_acquire, METH_NOARGS,
     "Take the lock if it is free and nobody waits for it; never waits."},
    {"acquire", FifoLock_acquire, METH_NOARGS,
     "Take the lock after everybody who asked before (the GIL is released while waiting)."},
    {"release", FifoLock_release, METH_NOARGS,
     "Give the lock to the next in line (RuntimeError when it is not held)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FifoLock_getset[] = {
    {"busy", FifoLock_busy, NULL, "Held, or handed over to a waiter: a caller would wait.",
     NULL},
    {"waiting", FifoLock_waiting, NULL, "How many callers wait for their turn.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FifoLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vdev.tpm._native.FifoLock",
    .tp_basicsize = sizeof(FifoLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A lock granted in the order it was asked for (a ticket lock).",
    .tp_new = FifoLock_new,
    .tp_dealloc = (destructor)FifoLock_dealloc,
    .tp_methods = FifoLock_methods,
    .tp_getset = FifoLock_getset,
};

/* -- Cell ---------------------------------------------------------------------------- */

static PyObject *Cell_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"value", NULL};
    long value = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|l:Cell", names, &value))
        return NULL;
    NativeCell *cell = (NativeCell *)type->tp_alloc(type, 0);
    if (cell != NULL)
        cell_set((PyObject *)cell, value);
    return (PyObject *)cell;
}

static PyObject *Cell_get(PyObject *self, void *closure)
{
    return PyLong_FromLong(cell_value(self));
}

static int Cell_set(PyObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Cell.value cannot be deleted");
        return -1;
    }
    long number = PyLong_AsLong(value);
    if (number == -1 && PyErr_Occurred())
        return -1;
    cell_set(self, number);
    return 0;
}

static PyGetSetDef Cell_getset[] = {
    {"value", Cell_get, Cell_set, "The integer.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CellType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vdev.tpm._native.Cell",
    .tp_basicsize = sizeof(NativeCell),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Cell(value=0): an integer that C code reads without the GIL.",
    .tp_new = Cell_new,
    .tp_getset = Cell_getset,
};

/* -- the module ---------------------------------------------------------------------- */

static struct NativeApi api = {
    .lock_type = &FifoLockType,
    .cell_type = &CellType,
    .try_acquire = fifo_try_acquire,
    .release = fifo_release,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vdev.tpm._native",
    "A vTPM's lock and state cells, readable from C without the GIL.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&FifoLockType) < 0 || PyType_Ready(&CellType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *capsule = PyCapsule_New(&api, NATIVE_API_CAPSULE, NULL);
    if (PyModule_AddObjectRef(m, "FifoLock", (PyObject *)&FifoLockType) < 0 ||
        PyModule_AddObjectRef(m, "Cell", (PyObject *)&CellType) < 0 ||
        PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
