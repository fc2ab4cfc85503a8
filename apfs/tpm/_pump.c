/* The per-message loop of a vTPM's swtpm data channel and mssim command port, in C: read
 * a command, run it in libtpms, send the response, with neither Python nor the GIL in
 * between.
 *
 * Why C: measured interleaved against swtpm (GetRandom(32) round trips, pinned to one
 * CPU), the Python loop (recv, VTpm.transmit, sendall) costs 1.34x swtpm's, and even a
 * bare Python recv/TPMLIB_Process/send loop 1.10x.
 *
 * The rules stay in Python (vdev.tpm.fastpath.FastPath): the pump runs a command here only
 * while it holds, without waiting, every lock Python would take, and every gate cell holds
 * the value under which Python would do nothing but call TPMLIB_Process (powered on,
 * locality 0, the virtio device ready, ...).  Everything else goes back to Python as it
 * came, which serves it the Python way.  serve(fd, listen_fd) returns
 * (what, request, response):
 *
 *   OTHER     the bytes read, not run (not a command framed as the pump takes them, a lock
 *             held by another caller, a gate closed);
 *   TAIL      the request, run, and its response: the permanent state changed (the stores
 *             cell moved), the response fails the virtio checks, or a size is beyond the
 *             limits cells.  The first lock is still held: Python finishes
 *             (FastPath.finish: checks, save, release) and sends what it returns;
 *   CLOSED    the client closed the connection between requests;
 *   HANDOVER  the connection is served in the accepting thread (listen_fd >= 0) and
 *             another client waits, or it is a long one (LONG_CONNECTION requests): a new thread
 *             should accept; call again with listen_fd -1.
 *
 * Framings (what the Python readers do, vdev.tpm.swtpm.DataReader, vdev.tpm.mssim, and
 * vdev.tpm.swtpm.Swtpm.control):
 *   SWTPM  swtpm 0.7.1's data channel: one read of at least a header's 10 bytes is one
 *          command; taken when raw (tag 0x8001/0x8002) and at most TPM_BUFSIZE bytes.
 *   MSSIM  the simulator's command port: u32 8 (SEND_COMMAND), u8 locality, u32 N, N bytes,
 *          read until complete; answered u32 M, M bytes, u32 0.  Taken at locality 0, with
 *          nothing after it in the reads.
 *   CONTROL  swtpm's control channel: CMD_SET_LOCALITY (u32 5, u8 locality, bare or padded
 *          to 4 bytes: tpm2-tss's TCTI sends it on a connection of its own for every tool)
 *          with a locality of 0..4 sets the locality cell and is answered u32 0; every
 *          other request is Python's.
 *   PLATFORM the simulator's platform port: a bare u32 code among the ``acks`` Python
 *          declares (signals with nothing to do while the gate holds: POWER_ON of a
 *          powered TPM, NV_ON, ...) is answered u32 0; every other code is Python's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "_native.h"

enum { CLOSED = 0, OTHER = 1, TAIL = 2, HANDOVER = 3, FAILED = 4, STOPPED = 5 };
enum { SWTPM = 0, MSSIM = 1, CONTROL = 2, PLATFORM = 3 };

#define HEADER_SIZE 10
#define TPM_BUFSIZE 4096 /* the virtio device's buffer (vdev.tpm.virtio) */
#define MSSIM_PREFIX 9
#define MSSIM_SEND_COMMAND 8
#define CMD_SET_LOCALITY 5 /* swtpm's control channel */
#define MAX_LOCALITY 4
/* vdev.tpm.swtpm.READ_SIZE, a command and the TCG prefix; also the largest mssim request */
#define READ_SIZE (TPM_BUFSIZE + MSSIM_PREFIX)
#define MAX_GATE 8
#define MAX_ACKS 16
#define LONG_CONNECTION 64 /* requests served in the accepting thread before a handover */

typedef uint32_t (*ProcessFn)(unsigned char **response, uint32_t *length, uint32_t *size,
                              unsigned char *command, uint32_t command_length);

static struct NativeApi *native;

typedef struct {
    PyObject_HEAD
    ProcessFn process;
    int framing;
    PyObject *locks;  /* tuple of FifoLock, taken in order */
    PyObject *gate;   /* tuple of (Cell, int); kept for the references */
    PyObject *stores; /* Cell: moves when libtpms stores its permanent state */
    PyObject *limits; /* None or (Cell, Cell): command and response sizes run here */
    PyObject *locality; /* CONTROL: the Cell that CMD_SET_LOCALITY sets */
    Py_ssize_t ack_count; /* PLATFORM: the codes acknowledged with nothing done */
    uint32_t acks[MAX_ACKS];
    Py_ssize_t gates;
    PyObject *gate_cells[MAX_GATE];
    long gate_values[MAX_GATE];
    unsigned char *response; /* libtpms (re)allocates it; kept across commands */
    uint32_t response_size;
    struct timeval send_timeout; /* SO_SNDTIMEO of the connections accept() takes */
    pthread_mutex_t guard;       /* current and stopping, for stop() from another thread */
    int current;                 /* the connection accept() serves, or -1 */
    int stopping;
} Pump;

/* One request as read: buf[0:length], the command at buf[command:command + size]. */
typedef struct {
    unsigned char buf[READ_SIZE];
    uint32_t length;
    uint32_t command;
    uint32_t size;
} Request;

/* What the loop came to, for Python. */
typedef struct {
    int what; /* CLOSED, OTHER, TAIL, HANDOVER, FAILED (errno in error), STOPPED */
    int error;
    uint32_t response; /* TAIL: the response's length */
} Step;

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(unsigned char *p, uint32_t value)
{
    p[0] = value >> 24;
    p[1] = value >> 16;
    p[2] = value >> 8;
    p[3] = value;
}

static void release_from(Pump *pump, Py_ssize_t first)
{
    for (Py_ssize_t i = PyTuple_GET_SIZE(pump->locks) - 1; i >= first; i--)
        native->release(PyTuple_GET_ITEM(pump->locks, i));
}

/* Take every lock in order without waiting: 1 taken, 0 not (none held then). */
static int take_locks(Pump *pump)
{
    Py_ssize_t count = PyTuple_GET_SIZE(pump->locks);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!native->try_acquire(PyTuple_GET_ITEM(pump->locks, i))) {
            while (i-- > 0)
                native->release(PyTuple_GET_ITEM(pump->locks, i));
            return 0;
        }
    }
    return 1;
}

static int gate_open(Pump *pump)
{
    for (Py_ssize_t i = 0; i < pump->gates; i++)
        if (cell_value(pump->gate_cells[i]) != pump->gate_values[i])
            return 0;
    return 1;
}

static int within_limits(Pump *pump, uint32_t command, uint32_t response)
{
    return pump->limits == Py_None ||
           (command <= (unsigned long)cell_value(PyTuple_GET_ITEM(pump->limits, 0)) &&
            response <= (unsigned long)cell_value(PyTuple_GET_ITEM(pump->limits, 1)));
}

/* Framings whose requests the pump answers with u32 0 and no command (CONTROL's
 * SET_LOCALITY, PLATFORM's idle signals). */
static int acknowledges(const Pump *pump)
{
    return pump->framing == CONTROL || pump->framing == PLATFORM;
}

/* What the virtio device checks of a response (VirtioTpm.check_response says why). */
static int response_ok(const unsigned char *response, uint32_t length)
{
    return length >= HEADER_SIZE && length <= TPM_BUFSIZE && be32(response + 2) == length;
}

static ssize_t receive(int fd, unsigned char *into, size_t room)
{
    ssize_t n;
    while ((n = recv(fd, into, room, 0)) < 0 && errno == EINTR)
        ;
    return n;
}

static int send_all(int fd, const unsigned char *data, size_t length)
{
    while (length) {
        ssize_t sent = send(fd, data, length, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += sent;
        length -= (size_t)sent;
    }
    return 0;
}

/* Wait until fd has something to read; 0 when, first, another client waits on listen_fd
 * (when it is not -1). */
static int readable_first(int fd, int listen_fd)
{
    if (listen_fd < 0)
        return 1;
    struct pollfd fds[2] = {{fd, POLLIN, 0}, {listen_fd, POLLIN, 0}};
    while (poll(fds, 2, -1) < 0 && errno == EINTR)
        ;
    /* this client first, even when another one connects at the same time */
    return fds[0].revents || !fds[1].revents;
}

/* Read one request.  1: a command the pump may run; 0: *step says why not (OTHER with
 * the bytes read, CLOSED, HANDOVER, or an error). */
static int read_request(Pump *pump, int fd, int listen_fd, Request *request, Step *step)
{
    if (!readable_first(fd, listen_fd)) {
        *step = (Step){HANDOVER, 0, 0};
        return 0;
    }
    ssize_t n = receive(fd, request->buf, READ_SIZE);
    if (n <= 0) {
        *step = n == 0 ? (Step){CLOSED, 0, 0} : (Step){FAILED, errno, 0};
        return 0;
    }
    request->length = (uint32_t)n;
    *step = (Step){OTHER, 0, 0};
    const unsigned char *buf = request->buf;
    if (pump->framing == SWTPM) {
        request->command = 0;
        request->size = request->length;
        return n >= HEADER_SIZE && n <= TPM_BUFSIZE && buf[0] == 0x80 &&
               (buf[1] == 1 || buf[1] == 2);
    }
    if (pump->framing == CONTROL) /* CMD_SET_LOCALITY, its u8 bare or padded to 4 bytes */
        return n >= 5 && n <= 8 && be32(buf) == CMD_SET_LOCALITY && buf[4] <= MAX_LOCALITY;
    if (pump->framing == PLATFORM) { /* one bare u32 code a write, as the TCTI sends them */
        for (Py_ssize_t i = 0; n == 4 && i < pump->ack_count; i++)
            if (be32(buf) == pump->acks[i])
                return 1;
        return 0;
    }
    /* MSSIM: the prefix, then the command, in as many reads as it takes (tpm2-tss writes
     * them separately).  Waiting for the rest, Python's way is taken when another client
     * comes first (Python hands the accepting over then) or the client goes away. */
    while (request->length < 4 || (be32(buf) == MSSIM_SEND_COMMAND &&
                                   (request->length < MSSIM_PREFIX ||
                                    (be32(buf + 5) <= TPM_BUFSIZE &&
                                     request->length < MSSIM_PREFIX + be32(buf + 5))))) {
        /* As apfs.tpm.sockets.quick_ack: no delayed ACK for the part that came. */
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &(int){1}, sizeof(int));
        if (!readable_first(fd, listen_fd))
            return 0;
        n = receive(fd, request->buf + request->length, READ_SIZE - request->length);
        if (n <= 0)
            return 0;
        request->length += (uint32_t)n;
    }
    if (be32(buf) != MSSIM_SEND_COMMAND)
        return 0;
    request->command = MSSIM_PREFIX;
    request->size = be32(buf + 5);
    return buf[4] == 0 && request->size <= TPM_BUFSIZE &&
           request->length == MSSIM_PREFIX + request->size;
}

/* Run the command if every lock and gate allow.  1: it ran and passed, its response is
 * pump->response[0:*length] and no lock is held; 0: *step says what Python gets (OTHER:
 * not run; TAIL: run, the first lock still held). */
static int run(Pump *pump, Request *request, uint32_t *length, Step *step)
{
    if (!take_locks(pump)) {
        *step = (Step){OTHER, 0, 0};
        return 0;
    }
    /* swtpm's control channel takes CMD_SET_LOCALITY in any power state: no gate there. */
    if (pump->framing != CONTROL && !gate_open(pump)) {
        release_from(pump, 0);
        *step = (Step){OTHER, 0, 0};
        return 0;
    }
    if (acknowledges(pump)) { /* in the TPM's turn, as Python takes the request */
        if (pump->framing == CONTROL) /* what Swtpm._set_locality does */
            cell_set(pump->locality, request->buf[4]);
        release_from(pump, 0);
        *length = 0;
        return 1;
    }
    long stores = cell_value(pump->stores);
    uint32_t rc = pump->process(&pump->response, length, &pump->response_size,
                                request->buf + request->command, request->size);
    if (rc != 0 || cell_value(pump->stores) != stores ||
        !response_ok(pump->response, *length) ||
        !within_limits(pump, request->size, *length)) {
        /* Python finishes it holding the first lock, as it would have run it. */
        release_from(pump, 1);
        *step = (Step){TAIL, 0, rc == 0 ? *length : 0};
        return 0;
    }
    release_from(pump, 0);
    return 1;
}

static int send_response(Pump *pump, int fd, uint32_t length)
{
    if (pump->framing == SWTPM)
        return send_all(fd, pump->response, length);
    if (acknowledges(pump)) /* TPM_SUCCESS, ACK */
        return send_all(fd, (const unsigned char *)"\0\0\0\0", 4);
    unsigned char framed[TPM_BUFSIZE + 8];
    put_be32(framed, length);
    memcpy(framed + 4, pump->response, length);
    put_be32(framed + 4 + length, 0);
    return send_all(fd, framed, length + 8);
}

/* The loop, without the GIL, until something needs Python. */
static void loop(Pump *pump, int fd, int listen_fd, Request *request, Step *step)
{
    for (int served = 1;; served++) {
        uint32_t length;
        if (!read_request(pump, fd, listen_fd, request, step) ||
            !run(pump, request, &length, step))
            return;
        if (send_response(pump, fd, length) < 0) {
            *step = (Step){FAILED, errno, 0};
            return;
        }
        /* A long-lived client on a connection served in the accepting thread: a new thread
         * takes accepting over, and the polls stop.  Not at the second request: a tool of
         * tpm2-tools sends a few on each of its connections, and a thread started for each
         * (~100 us) would cost more than the polls it saves (~0.5 us each). */
        if (listen_fd >= 0 && served == LONG_CONNECTION) {
            *step = (Step){HANDOVER, 0, 0};
            return;
        }
    }
}

/* -- accept(): the connections of a listener, served here while they need no Python -- */

/* The next connection, with the options apfs.tpm.sockets gives every connection; -1 with
 * *step set (FAILED, or STOPPED once stop() was called). */
static int accept_one(Pump *pump, int listen_fd, Step *step)
{
    pthread_mutex_lock(&pump->guard);
    int stopped = pump->stopping;
    pthread_mutex_unlock(&pump->guard);
    if (stopped) {
        *step = (Step){STOPPED, 0, 0};
        return -1;
    }
    int fd;
    while ((fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC)) < 0 &&
           (errno == EINTR || errno == ECONNABORTED))
        ;
    if (fd < 0) {
        *step = (Step){FAILED, errno, 0};
        return -1;
    }
    int domain = 0;
    socklen_t size = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) == 0 && domain == AF_INET)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &pump->send_timeout, sizeof(pump->send_timeout));
    pthread_mutex_lock(&pump->guard);
    int stopping = pump->stopping;
    if (!stopping)
        pump->current = fd;
    pthread_mutex_unlock(&pump->guard);
    if (stopping) {
        close(fd);
        *step = (Step){STOPPED, 0, 0};
        return -1;
    }
    return fd;
}

/* The connection leaves the pump: closed here, or handed to Python. */
static void let_go(Pump *pump, int close_it)
{
    pthread_mutex_lock(&pump->guard);
    if (close_it)
        close(pump->current);
    pump->current = -1;
    pthread_mutex_unlock(&pump->guard);
}

/* Accept and serve until a connection needs Python: its descriptor, or -1 (*step says;
 * STOPPED also when stop() shut the connection being served). */
static int accept_loop(Pump *pump, int listen_fd, Request *request, Step *step)
{
    for (;;) {
        int fd = accept_one(pump, listen_fd, step);
        if (fd < 0)
            return -1;
        loop(pump, fd, listen_fd, request, step);
        if (step->what != CLOSED) {
            let_go(pump, 0);
            return fd;
        }
        let_go(pump, 1); /* the client's orderly close between requests: the next one */
    }
}

static PyObject *outcome(Pump *pump, Step *step, int fd, Request *request)
{
    int read = step->what == OTHER || step->what == TAIL;
    return Py_BuildValue("(iiy#y#i)", step->what, fd, (const char *)request->buf,
                         (Py_ssize_t)(read ? request->length : 0),
                         pump->response != NULL ? (const char *)pump->response : "",
                         (Py_ssize_t)step->response, step->error);
}

/* serve() (fd >= 0) and accept() (fd -1): the loop without the GIL, then its outcome. */
static PyObject *served(Pump *pump, int fd, int listen_fd)
{
    Request *request = PyMem_RawMalloc(sizeof(Request));
    if (request == NULL)
        return PyErr_NoMemory();
    request->length = 0;
    Step step;
    Py_BEGIN_ALLOW_THREADS
    if (fd < 0)
        fd = accept_loop(pump, listen_fd, request, &step);
    else
        loop(pump, fd, listen_fd, request, &step);
    Py_END_ALLOW_THREADS
    PyObject *result = outcome(pump, &step, fd, request);
    PyMem_RawFree(request);
    return result;
}

static PyObject *Pump_serve(Pump *pump, PyObject *args)
{
    int fd, listen_fd;
    if (!PyArg_ParseTuple(args, "ii:serve", &fd, &listen_fd))
        return NULL;
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "Pump.serve: descriptor %d", fd);
        return NULL;
    }
    return served(pump, fd, listen_fd);
}

static PyObject *Pump_accept(Pump *pump, PyObject *args)
{
    int listen_fd;
    if (!PyArg_ParseTuple(args, "i:accept", &listen_fd))
        return NULL;
    return served(pump, -1, listen_fd);
}

static PyObject *Pump_stop(Pump *pump, PyObject *unused)
{
    pthread_mutex_lock(&pump->guard);
    pump->stopping = 1;
    if (pump->current >= 0)
        shutdown(pump->current, SHUT_RDWR); /* wakes the thread waiting on it */
    pthread_mutex_unlock(&pump->guard);
    Py_RETURN_NONE;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Pump *pump = (Pump *)type->tp_alloc(type, 0);
    if (pump != NULL) {
        pthread_mutex_init(&pump->guard, NULL);
        pump->current = -1;
    }
    return (PyObject *)pump;
}

static int Pump_init(Pump *pump, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"process", "locks", "gate", "stores", "framing", "limits",
                            "send_timeout", "locality", "acks", NULL};
    unsigned long long process;
    PyObject *locks, *gate, *stores, *limits = Py_None, *locality = Py_None, *acks = NULL;
    int framing;
    double send_timeout = 5.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KO!O!O!i|OdOO!:Pump", names, &process,
                                     &PyTuple_Type, &locks, &PyTuple_Type, &gate,
                                     native->cell_type, &stores, &framing, &limits,
                                     &send_timeout, &locality, &PyTuple_Type, &acks))
        return -1;
    Py_ssize_t ack_count = acks == NULL ? 0 : PyTuple_GET_SIZE(acks);
    if (ack_count > MAX_ACKS) {
        PyErr_Format(PyExc_ValueError, "Pump: at most %d acks", MAX_ACKS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < ack_count; i++) {
        pump->acks[i] = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(acks, i));
        if (PyErr_Occurred())
            return -1;
    }
    pump->ack_count = ack_count;
    if (framing == CONTROL && !PyObject_TypeCheck(locality, native->cell_type)) {
        PyErr_SetString(PyExc_TypeError, "Pump: CONTROL framing needs the locality Cell");
        return -1;
    }
    if (!(send_timeout > 0)) {
        PyErr_SetString(PyExc_ValueError, "Pump: send_timeout must be positive");
        return -1;
    }
    pump->send_timeout.tv_sec = (time_t)send_timeout;
    pump->send_timeout.tv_usec = (suseconds_t)((send_timeout - (double)(time_t)send_timeout) * 1e6);
    if (process == 0 || PyTuple_GET_SIZE(locks) == 0) {
        PyErr_SetString(PyExc_ValueError, "Pump: needs a process address and a lock");
        return -1;
    }
    if (framing < SWTPM || framing > PLATFORM) {
        PyErr_Format(PyExc_ValueError, "Pump: framing %d is not SWTPM, MSSIM, CONTROL or "
                     "PLATFORM", framing);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(locks); i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(locks, i), native->lock_type)) {
            PyErr_SetString(PyExc_TypeError, "Pump: locks must be vdev.tpm._native.FifoLock");
            return -1;
        }
    }
    if (limits != Py_None &&
        (!PyTuple_Check(limits) || PyTuple_GET_SIZE(limits) != 2 ||
         !PyObject_TypeCheck(PyTuple_GET_ITEM(limits, 0), native->cell_type) ||
         !PyObject_TypeCheck(PyTuple_GET_ITEM(limits, 1), native->cell_type))) {
        PyErr_SetString(PyExc_TypeError, "Pump: limits is None or a (Cell, Cell) pair");
        return -1;
    }
    Py_ssize_t gates = PyTuple_GET_SIZE(gate);
    if (gates > MAX_GATE) {
        PyErr_Format(PyExc_ValueError, "Pump: at most %d gate entries", MAX_GATE);
        return -1;
    }
    for (Py_ssize_t i = 0; i < gates; i++) {
        PyObject *entry = PyTuple_GET_ITEM(gate, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(entry, 0), native->cell_type)) {
            PyErr_SetString(PyExc_TypeError, "Pump: a gate entry is a (Cell, int) pair");
            return -1;
        }
        pump->gate_values[i] = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        if (PyErr_Occurred())
            return -1;
        pump->gate_cells[i] = PyTuple_GET_ITEM(entry, 0);
    }
    pump->gates = gates;
    pump->process = (ProcessFn)(uintptr_t)process;
    pump->framing = framing;
    Py_XSETREF(pump->locks, Py_NewRef(locks));
    Py_XSETREF(pump->gate, Py_NewRef(gate));
    Py_XSETREF(pump->stores, Py_NewRef(stores));
    Py_XSETREF(pump->limits, Py_NewRef(limits));
    Py_XSETREF(pump->locality, Py_NewRef(locality));
    return 0;
}

static void Pump_dealloc(Pump *pump)
{
    Py_XDECREF(pump->locks);
    Py_XDECREF(pump->gate);
    Py_XDECREF(pump->stores);
    Py_XDECREF(pump->limits);
    Py_XDECREF(pump->locality);
    free(pump->response); /* libtpms (re)allocates it with the C library's allocator */
    pthread_mutex_destroy(&pump->guard);
    Py_TYPE(pump)->tp_free((PyObject *)pump);
}

static PyMethodDef Pump_methods[] = {
    {"serve", (PyCFunction)Pump_serve, METH_VARARGS,
     "serve(fd, listen_fd) -> (what, fd, request, response, errno): run the commands "
     "arriving on fd until one needs Python; listen_fd >= 0 is watched for a waiting "
     "client (HANDOVER)."},
    {"accept", (PyCFunction)Pump_accept, METH_VARARGS,
     "accept(listen_fd) -> (what, fd, request, response, errno): accept connections and "
     "serve them as serve(fd, listen_fd) does, the next one after a client's close, until "
     "one needs Python (it owns fd then), accept fails (FAILED) or stop() (STOPPED)."},
    {"stop", (PyCFunction)Pump_stop, METH_NOARGS,
     "From another thread: end accept() (its connection is shut down, none is taken)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "apfs.tpm._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pump(process, locks, gate, stores, framing, limits=None, send_timeout=5.0, "
              "locality=None, acks=()): a connection's command loop in C; accept() serves a "
              "listener's connections.",
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "apfs.tpm._pump",
    "A vTPM connection's per-message loop in C (see Pump).", -1, NULL,
};

PyMODINIT_FUNC PyInit__pump(void)
{
    /* PyCapsule_Import walks attributes from "vdev": the submodule must be imported. */
    PyObject *native_module = PyImport_ImportModule("vdev.tpm._native");
    if (native_module == NULL)
        return NULL;
    Py_DECREF(native_module);
    native = PyCapsule_Import(NATIVE_API_CAPSULE, 0);
    if (native == NULL || PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Pump", (PyObject *)&PumpType) < 0 ||
        PyModule_AddIntConstant(m, "CLOSED", CLOSED) < 0 ||
        PyModule_AddIntConstant(m, "OTHER", OTHER) < 0 ||
        PyModule_AddIntConstant(m, "TAIL", TAIL) < 0 ||
        PyModule_AddIntConstant(m, "HANDOVER", HANDOVER) < 0 ||
        PyModule_AddIntConstant(m, "FAILED", FAILED) < 0 ||
        PyModule_AddIntConstant(m, "STOPPED", STOPPED) < 0 ||
        PyModule_AddIntConstant(m, "SWTPM", SWTPM) < 0 ||
        PyModule_AddIntConstant(m, "MSSIM", MSSIM) < 0 ||
        PyModule_AddIntConstant(m, "CONTROL", CONTROL) < 0 ||
        PyModule_AddIntConstant(m, "PLATFORM", PLATFORM) < 0 ||
        PyModule_AddIntConstant(m, "LONG_CONNECTION", LONG_CONNECTION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
