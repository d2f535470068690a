/*
 * mmwal._speedups.ReservationLock: the reservation lock, a threading.Lock the
 * append fast path (_appendpath.c) can try and let go without a Python call.
 *
 * It behaves as threading.Lock does for every use the log makes of it:
 * acquire(blocking=True, timeout=-1) -> bool, release(), locked(), the context
 * manager, and threading.Condition over it (Condition needs only acquire and
 * release). A call from Python costs what threading.Lock's does; the gain is
 * the fast path's: reservation_lock_try and reservation_lock_release are two C
 * calls where a threading.Lock needs two method calls with argument parsing
 * (measured: 75 of the 135 ns an append took).
 *
 * Rules kept here:
 *  - Blocking releases the GIL, and a signal interrupts the wait: its Python
 *    handler runs, and an exception it raises comes out of acquire (as from
 *    threading.Lock.acquire).
 *  - Not reentrant, and any thread may release it (as threading.Lock).
 *  - `held` changes only with the GIL held, right after the OS lock is taken or
 *    before it is let go (release_tickets lets the OS locks of several go
 *    after it let the GIL go; nothing reads a ticket's `held` meanwhile);
 *    locked() reads it.
 *
 * The group commit's tickets (a parked thread's lock, mmwal._commit) are
 * ReservationLocks too: release_tickets lets their OS locks go with the GIL
 * let go, so the thread each one wakes can take the GIL at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#include "_speedups.h"

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    char held;
    PyObject *weakrefs;
} ReservationLock;

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "ReservationLock() takes no arguments");
        return NULL;
    }
    ReservationLock *self = (ReservationLock *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock");
        return NULL;
    }
    return (PyObject *)self;
}

static void
lock_dealloc(ReservationLock *self)
{
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->lock != NULL) {
        if (self->held) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static double
monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Wait for the lock, the GIL released, for up to `timeout` seconds (< 0: for
 * ever); 1 taken, 0 timed out, -1 an exception (from a signal handler). */
static int
wait_for(ReservationLock *self, double timeout)
{
    double deadline = timeout >= 0 ? monotonic_seconds() + timeout : 0;
    for (;;) {
        PY_TIMEOUT_T wait = -1;
        if (timeout >= 0) {
            double left = deadline - monotonic_seconds();
            wait = left > 0 ? (PY_TIMEOUT_T)(left * 1e6) : 0;
        }
        PyLockStatus status;
        Py_BEGIN_ALLOW_THREADS
        status = PyThread_acquire_lock_timed(self->lock, wait, 1);
        Py_END_ALLOW_THREADS
        if (status == PY_LOCK_ACQUIRED) {
            return 1;
        }
        if (status == PY_LOCK_FAILURE) {
            return 0;
        }
        /* Interrupted by a signal: run its handler; an exception ends the wait. */
        if (Py_MakePendingCalls() < 0) {
            return -1;
        }
    }
}

PyDoc_STRVAR(lock_acquire_doc,
"acquire(blocking=True, timeout=-1)\n--\n\n"
"Take the lock; return whether it was taken (as threading.Lock.acquire).");

static PyObject *
lock_acquire(ReservationLock *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|pd:acquire", keywords, &blocking,
                                     &timeout)) {
        return NULL;
    }
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be positive");
        return NULL;
    }
    if (timeout > (double)PY_TIMEOUT_MAX / 1e6) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return NULL;
    }
    int taken = PyThread_acquire_lock(self->lock, NOWAIT_LOCK) == 1;
    if (!taken && blocking) {
        taken = wait_for(self, timeout);
        if (taken < 0) {
            return NULL;
        }
    }
    if (taken) {
        self->held = 1;
    }
    return PyBool_FromLong(taken);
}

PyDoc_STRVAR(lock_release_doc,
"release()\n--\n\nLet the lock go; RuntimeError if it is not held.");

static PyObject *
lock_release(ReservationLock *self, PyObject *Py_UNUSED(unused))
{
    if (!self->held) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    self->held = 0;
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

static PyObject *
lock_exit(ReservationLock *self, PyObject *const *args, Py_ssize_t nargs)
{
    return lock_release(self, NULL);
}

static PyObject *
lock_locked(ReservationLock *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(self->held);
}

static PyObject *
lock_repr(ReservationLock *self)
{
    return PyUnicode_FromFormat("<%s %s object at %p>", self->held ? "locked" : "unlocked",
                                Py_TYPE(self)->tp_name, self);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_VARARGS | METH_KEYWORDS,
     lock_acquire_doc},
    {"__enter__", (PyCFunction)(void (*)(void))lock_acquire, METH_VARARGS | METH_KEYWORDS,
     lock_acquire_doc},
    {"release", (PyCFunction)lock_release, METH_NOARGS, lock_release_doc},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, lock_release_doc},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "Whether the lock is held."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(lock_doc,
"ReservationLock()\n--\n\n"
"A threading.Lock whose try and release the append fast path calls in C.");

static PyTypeObject ReservationLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.ReservationLock",
    .tp_basicsize = sizeof(ReservationLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = lock_doc,
    .tp_new = lock_new,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_repr = (reprfunc)lock_repr,
    .tp_weaklistoffset = offsetof(ReservationLock, weakrefs),
    .tp_methods = lock_methods,
};

int
is_reservation_lock(PyObject *object)
{
    return Py_IS_TYPE(object, &ReservationLockType);
}

int
reservation_lock_try(PyObject *lock)
{
    ReservationLock *self = (ReservationLock *)lock;
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK) != 1) {
        return 0;
    }
    self->held = 1;
    return 1;
}

void
reservation_lock_release(PyObject *lock)
{
    ReservationLock *self = (ReservationLock *)lock;
    self->held = 0;
    PyThread_release_lock(self->lock);
}

PyObject *
reservation_lock_new(void)
{
    PyObject *none = PyTuple_New(0);
    if (none == NULL) {
        return NULL;
    }
    PyObject *lock = lock_new(&ReservationLockType, none, NULL);
    Py_DECREF(none);
    return lock;
}

int
reservation_lock_acquire(PyObject *lock, int interruptible)
{
    ReservationLock *self = (ReservationLock *)lock;
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK) != 1) {
        if (interruptible) {
            if (wait_for(self, -1) < 0) {
                return -1;
            }
        }
        else {
            Py_BEGIN_ALLOW_THREADS
            PyThread_acquire_lock(self->lock, WAIT_LOCK);
            Py_END_ALLOW_THREADS
        }
    }
    self->held = 1;
    return 1;
}

/* Release each ticket in `tickets` (a list), as each one's release() would:
 * the held ReservationLocks with the GIL let go for the releases, so that a
 * thread woken on another ticket's wait takes the GIL at once instead of
 * waking to wait for it; anything else (a threading lock, a lock not held,
 * which raises) through its release method, in order, stopping at the first
 * exception. 0, or -1 with an exception. */
int
release_tickets(PyObject *tickets)
{
    if (!PyList_Check(tickets)) {
        PyErr_SetString(PyExc_TypeError, "release_tickets takes a list");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(tickets);
    PyThread_type_lock stack[16];
    PyThread_type_lock *locks = stack;
    if (count > 16) {
        locks = PyMem_Malloc(sizeof(PyThread_type_lock) * (size_t)count);
        if (locks == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_ssize_t native = 0;
    int failed = 0;
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        PyObject *ticket = PyList_GET_ITEM(tickets, i);
        if (Py_IS_TYPE(ticket, &ReservationLockType) && ((ReservationLock *)ticket)->held) {
            ((ReservationLock *)ticket)->held = 0;
            locks[native++] = ((ReservationLock *)ticket)->lock;
        }
        else {
            PyObject *done = PyObject_CallMethod(ticket, "release", NULL);
            if (done == NULL) {
                failed = 1;
            }
            Py_XDECREF(done);
        }
    }
    if (native > 0) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < native; i++) {
            PyThread_release_lock(locks[i]);
        }
        Py_END_ALLOW_THREADS
    }
    if (locks != stack) {
        PyMem_Free(locks);
    }
    return failed ? -1 : 0;
}

static PyObject *
wake_tickets(PyObject *module, PyObject *tickets)
{
    if (release_tickets(tickets) != 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef ticket_functions[] = {
    {"release_tickets", (PyCFunction)wake_tickets, METH_O,
     "release_tickets(tickets, /)\n--\n\nRelease each ticket, the GIL let go for it."},
    {NULL, NULL, 0, NULL},
};

int
add_lock_type(PyObject *module)
{
    if (PyModule_AddFunctions(module, ticket_functions) != 0) {
        return -1;
    }
    if (PyType_Ready(&ReservationLockType) != 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "ReservationLock", (PyObject *)&ReservationLockType);
}
