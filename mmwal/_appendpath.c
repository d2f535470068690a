/*
 * The append fast path in C: ReservationsBase and Appender (mmwal._speedups).
 *
 * ReservationsBase holds the fields of mmwal._reservations.Reservations that an
 * append reads and moves (next_lsn, fast_limit, piece, piece_base, appends,
 * followers_waiting, lock) as C members, read and written from Python as plain
 * attributes; Reservations subclasses it. Appender is what a writer's
 * Wal.append and Wal.append_many are bound to: append(data) and
 * append_many(records) write each frame (header, CRC-32C, payload) straight into
 * the store's piece that holds the end, one copy of each payload and no Python
 * frame, and hand the call to the Python path (mmwal._appending) whenever the
 * fast path does not apply.
 *
 * Rules kept here (_reservations.py lists all of the reservation lock's):
 *  - The end moves only with `lock` held, taken with acquire(False) or, when
 *    another thread holds it, through Reservations.acquire_contended (yield,
 *    then block: no convoy), and only while the frames end at or below
 *    fast_limit; fast_limit 0 always takes the Python path.
 *  - Between taking the lock and letting it go the GIL is never released and no
 *    Python code runs: nothing can see a frame half copied or the end half moved.
 *    A batch is therefore copied under the lock whatever its size (no in_flight).
 *  - No export of the piece outlives a call: its buffer is taken for the copy
 *    and released before the lock is let go, so whoever holds the lock may
 *    close or swap the store's mappings.
 *  - Whatever the fast path does not take goes to the Python path untouched, and
 *    the Python path decides and raises as it always did: a type not accepted, a
 *    buffer that is not contiguous, a record over max_record_size or not below
 *    inline_copy_limit, no room below fast_limit, a payload overlapping the frame
 *    it would be copied to.
 *  - Followers are woken after the end moved and the lock is let go, and only
 *    when followers_waiting is nonzero.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#include "_speedups.h"

static PyTypeObject *mmap_type; /* mmap.mmap, looked up once */


static PyObject *
base_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    ReservationsBase *self = (ReservationsBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->piece = PyBytes_FromStringAndSize(NULL, 0);
    self->lock = Py_NewRef(Py_None);
    if (self->piece == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
base_traverse(ReservationsBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->piece);
    Py_VISIT(self->lock);
    return 0;
}

static int
base_clear(ReservationsBase *self)
{
    Py_CLEAR(self->piece);
    Py_CLEAR(self->lock);
    return 0;
}

static void
base_dealloc(ReservationsBase *self)
{
    PyObject_GC_UnTrack(self);
    base_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef base_members[] = {
    {"next_lsn", T_LONGLONG, offsetof(ReservationsBase, next_lsn), 0,
     "The end of the log: the LSN the next reservation gets."},
    {"fast_limit", T_LONGLONG, offsetof(ReservationsBase, fast_limit), 0,
     "Frames ending at or below it go straight into piece; 0: the slow path."},
    {"piece_base", T_LONGLONG, offsetof(ReservationsBase, piece_base), 0,
     "The LSN of piece[0]."},
    {"appends", T_LONGLONG, offsetof(ReservationsBase, appends), 0,
     "Records appended since open."},
    {"followers_waiting", T_LONGLONG, offsetof(ReservationsBase, followers_waiting), 0,
     "Followers waiting on arrivals."},
    {"piece", T_OBJECT_EX, offsetof(ReservationsBase, piece), 0,
     "The store's piece that holds the end (a writable buffer while fast_limit > 0)."},
    {"lock", T_OBJECT_EX, offsetof(ReservationsBase, lock), 0,
     "The reservation lock (a threading.Lock), fixed before an Appender is made."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(base_doc,
"ReservationsBase()\n--\n\n"
"The fields of Reservations the append fast path reads and moves, as C members.");

static PyTypeObject ReservationsBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.ReservationsBase",
    .tp_basicsize = sizeof(ReservationsBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = base_doc,
    .tp_new = base_new,
    .tp_dealloc = (destructor)base_dealloc,
    .tp_traverse = (traverseproc)base_traverse,
    .tp_clear = (inquiry)base_clear,
    .tp_members = base_members,
};

/* One record's payload as the fast path copies it. */
typedef struct {
    const unsigned char *data;
    Py_ssize_t length;
    int has_view;
    Py_buffer view;
} Payload;

/* Take item's bytes: 1 taken, 0 not for the fast path (no exception set). */
static int
take_payload(PyObject *item, Payload *payload)
{
    payload->has_view = 0;
    if (PyBytes_CheckExact(item)) {
        payload->data = (const unsigned char *)PyBytes_AS_STRING(item);
        payload->length = PyBytes_GET_SIZE(item);
        return 1;
    }
    if (!PyBytes_Check(item) && !PyByteArray_Check(item) && !PyMemoryView_Check(item) &&
        !PyObject_TypeCheck(item, mmap_type)) {
        return 0;
    }
    /* A view that is not C-contiguous has no simple buffer: the Python path
     * copies it in logical order (memoryview.tobytes), as it always did. */
    if (PyObject_GetBuffer(item, &payload->view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        return 0;
    }
    payload->has_view = 1;
    payload->data = (const unsigned char *)payload->view.buf;
    payload->length = payload->view.len;
    return 1;
}

static void
drop_payloads(Payload *payloads, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        if (payloads[i].has_view) {
            payloads[i].has_view = 0;
            PyBuffer_Release(&payloads[i].view);
        }
    }
}

/* Copy the frames of payloads to the piece at next_lsn, move the end past them
 * and set *first to the first frame's LSN; call with the lock held. 1 done, 0
 * not for the fast path (nothing changed, no exception set). `total` is the
 * frames' size. */
static int
place_frames(ReservationsBase *reservations, const Payload *payloads, Py_ssize_t count,
             long long total, long long *first)
{
    long long lsn = reservations->next_lsn;
    if (total > reservations->fast_limit - lsn) {
        return 0;
    }
    long long end = lsn + total;
    Py_buffer piece;
    if (reservations->piece == NULL ||
        PyObject_GetBuffer(reservations->piece, &piece, PyBUF_WRITABLE) != 0) {
        PyErr_Clear();
        return 0;
    }
    long long offset = lsn - reservations->piece_base;
    if (offset < 0 || end - reservations->piece_base > (long long)piece.len) {
        PyBuffer_Release(&piece);
        return 0;
    }
    unsigned char *start = (unsigned char *)piece.buf + offset;
    unsigned char *stop = start + total;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* A payload read from where its frame goes (a view of the store's own
         * piece) would be overwritten while it is copied. */
        if (payloads[i].data < stop && payloads[i].data + payloads[i].length > start) {
            PyBuffer_Release(&piece);
            return 0;
        }
    }
    unsigned char *out = start;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* put_frame takes the CRC over the bytes as copied. */
        put_frame(out, payloads[i].data, (size_t)payloads[i].length);
        out += HEADER_SIZE + payloads[i].length;
    }
    PyBuffer_Release(&piece);
    reservations->next_lsn = end;
    reservations->appends += count;
    *first = lsn;
    return 1;
}

typedef struct {
    PyObject_HEAD
    ReservationsBase *reservations;
    PyObject *lock;          /* reservations.lock */
    int c_lock;              /* lock is a ReservationLock: tried and let go in C */
    PyObject *acquire;       /* reservations.lock.acquire */
    PyObject *release;       /* reservations.lock.release */
    PyObject *contended;     /* reservations.acquire_contended */
    PyObject *wake;          /* reservations.wake_followers */
    PyObject *fallback_one;  /* fallback_one(data) -> lsn: the Python append */
    PyObject *fallback_many; /* fallback_many(records) -> lsns: the Python append_many */
    PyObject *sync_to;       /* sync_to(target): the group commit's, or None */
    PyObject *as_bytes;      /* as_bytes(data) -> bytes, or None */
    long long max_record_size;
    long long inline_copy_limit;
} Appender;

static int
call_quietly(PyObject *callable)
{
    PyObject *done = PyObject_CallNoArgs(callable);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

/* Take the reservation lock as Reservations.place does: 0 held, -1 an exception. */
static int
take_lock(Appender *self)
{
    if (self->c_lock) {
        if (reservation_lock_try(self->lock)) {
            return 0;
        }
        return call_quietly(self->contended);
    }
    PyObject *arguments[1] = {Py_False};
    PyObject *taken = PyObject_Vectorcall(self->acquire, arguments, 1, NULL);
    if (taken == NULL) {
        return -1;
    }
    int held = taken == Py_True;
    Py_DECREF(taken);
    return held ? 0 : call_quietly(self->contended);
}

static int
let_go(Appender *self)
{
    if (self->c_lock) {
        reservation_lock_release(self->lock);
        return 0;
    }
    return call_quietly(self->release);
}

/* Place the frames under the lock, the first at *first; 1 placed, 0 for the
 * Python path, -1 an exception. */
static int
place_locked(Appender *self, const Payload *payloads, Py_ssize_t count, long long total,
             long long *first)
{
    if (take_lock(self) != 0) {
        return -1;
    }
    int placed = place_frames(self->reservations, payloads, count, total, first);
    if (let_go(self) != 0) {
        return -1;
    }
    if (placed && self->reservations->followers_waiting && call_quietly(self->wake) != 0) {
        return -1;
    }
    return placed;
}

PyDoc_STRVAR(appender_append_doc,
"append(data, /)\n--\n\n"
"Append one record; return its LSN.\n\n"
"Crash cost: the record is in the page cache when this returns; a process\n"
"crash keeps it, a machine crash before the next ``sync`` may lose it.");

static PyObject *
appender_append(Appender *self, PyObject *data)
{
    Payload payload;
    if (take_payload(data, &payload) && payload.length <= self->max_record_size &&
        payload.length < self->inline_copy_limit) {
        long long lsn = 0;
        int placed =
            place_locked(self, &payload, 1, HEADER_SIZE + (long long)payload.length, &lsn);
        drop_payloads(&payload, 1);
        if (placed < 0) {
            return NULL;
        }
        if (placed) {
            return PyLong_FromLongLong(lsn);
        }
    }
    else {
        drop_payloads(&payload, 1);
    }
    return PyObject_CallOneArg(self->fallback_one, data);
}

PyDoc_STRVAR(appender_append_and_sync_doc,
"append_and_sync(data, /)\n--\n\n"
"Append one record and make it durable; return its LSN.\n\n"
"Crash cost: none once it returns (as Wal.append_and_sync, whose steps these are).");

static PyObject *
appender_append_and_sync(Appender *self, PyObject *data)
{
    if (self->sync_to == Py_None || self->as_bytes == Py_None) {
        PyErr_SetString(PyExc_TypeError, "this Appender has no sync_to and as_bytes");
        return NULL;
    }
    /* Wal.append_and_sync: the record as bytes, appended, then synced to its end. */
    PyObject *payload =
        PyBytes_CheckExact(data) ? Py_NewRef(data) : PyObject_CallOneArg(self->as_bytes, data);
    if (payload == NULL) {
        return NULL;
    }
    PyObject *lsn = appender_append(self, payload);
    long long first = lsn == NULL ? -1 : PyLong_AsLongLong(lsn);
    PyObject *target = NULL;
    if (lsn != NULL && !(first == -1 && PyErr_Occurred())) {
        target = PyLong_FromLongLong(first + HEADER_SIZE + (long long)PyBytes_GET_SIZE(payload));
    }
    Py_DECREF(payload);
    PyObject *synced = target == NULL ? NULL : PyObject_CallOneArg(self->sync_to, target);
    Py_XDECREF(target);
    if (synced == NULL) {
        Py_XDECREF(lsn);
        return NULL;
    }
    Py_DECREF(synced);
    return lsn;
}

PyDoc_STRVAR(appender_append_many_doc,
"append_many(records, /)\n--\n\n"
"Append records in order, all or none; return their LSNs.\n\n"
"Crash cost: as ``append``; a crash may keep a prefix of the batch.");

static PyObject *
appender_append_many(Appender *self, PyObject *records)
{
    if (PyBytes_Check(records) || PyByteArray_Check(records) || PyMemoryView_Check(records) ||
        PyUnicode_Check(records) || PyObject_TypeCheck(records, mmap_type)) {
        return PyObject_CallOneArg(self->fallback_many, records);
    }
    /* A list of our own: an iterator is read once, and no other thread can drop
     * an item while its bytes are read here. */
    PyObject *items = PySequence_List(records);
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(items);
    Payload *payloads = count > 0 ? PyMem_New(Payload, (size_t)count) : NULL;
    if (count > 0 && payloads == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    Py_ssize_t taken = 0; /* payloads taken, to drop */
    int fast = count > 0;
    long long total = 0;
    while (fast && taken < count) {
        Payload *payload = &payloads[taken];
        if (!take_payload(PyList_GET_ITEM(items, taken), payload)) {
            fast = 0;
            break;
        }
        taken++;
        fast = payload->length <= self->max_record_size;
        total += HEADER_SIZE + (long long)payload->length;
    }
    int placed = 0;
    long long first = 0;
    if (fast) {
        placed = place_locked(self, payloads, count, total, &first);
    }
    PyObject *result = NULL;
    if (placed > 0) {
        result = PyList_New(count);
        long long lsn = first;
        for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
            PyObject *value = PyLong_FromLongLong(lsn);
            if (value == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyList_SET_ITEM(result, i, value);
            lsn += HEADER_SIZE + (long long)payloads[i].length;
        }
    }
    drop_payloads(payloads, taken);
    PyMem_Free(payloads);
    if (placed == 0) {
        result = PyObject_CallOneArg(self->fallback_many, items);
    }
    Py_DECREF(items);
    return result;
}

static PyObject *
appender_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *reservations, *fallback_one, *fallback_many;
    long long max_record_size, inline_copy_limit;
    static char *keywords[] = {"reservations", "max_record_size", "inline_copy_limit",
                               "fallback_one", "fallback_many", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!LLOO:Appender", keywords,
                                     &ReservationsBaseType, &reservations, &max_record_size,
                                     &inline_copy_limit, &fallback_one, &fallback_many)) {
        return NULL;
    }
    if (!PyCallable_Check(fallback_one) || !PyCallable_Check(fallback_many)) {
        PyErr_SetString(PyExc_TypeError, "the fallbacks must be callable");
        return NULL;
    }
    /* Frame lengths are 32-bit: a larger limit would let a length wrap. */
    if (max_record_size < 0 || max_record_size > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "max_record_size must fit a frame's length field");
        return NULL;
    }
    Appender *self = (Appender *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->reservations = (ReservationsBase *)Py_NewRef(reservations);
    self->max_record_size = max_record_size;
    self->inline_copy_limit = inline_copy_limit;
    self->fallback_one = Py_NewRef(fallback_one);
    self->fallback_many = Py_NewRef(fallback_many);
    self->sync_to = Py_NewRef(Py_None);
    self->as_bytes = Py_NewRef(Py_None);
    PyObject *lock = self->reservations->lock;
    if (lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_AttributeError, "reservations has no lock");
        return NULL;
    }
    self->lock = Py_NewRef(lock);
    self->c_lock = is_reservation_lock(lock);
    self->acquire = PyObject_GetAttrString(lock, "acquire");
    self->release = self->acquire ? PyObject_GetAttrString(lock, "release") : NULL;
    self->contended =
        self->release ? PyObject_GetAttrString(reservations, "acquire_contended") : NULL;
    self->wake = self->contended ? PyObject_GetAttrString(reservations, "wake_followers") : NULL;
    if (self->wake == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
appender_traverse(Appender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->reservations);
    Py_VISIT(self->lock);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->contended);
    Py_VISIT(self->wake);
    Py_VISIT(self->fallback_one);
    Py_VISIT(self->fallback_many);
    Py_VISIT(self->sync_to);
    Py_VISIT(self->as_bytes);
    return 0;
}

static int
appender_clear(Appender *self)
{
    Py_CLEAR(self->reservations);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->contended);
    Py_CLEAR(self->wake);
    Py_CLEAR(self->fallback_one);
    Py_CLEAR(self->fallback_many);
    Py_CLEAR(self->sync_to);
    Py_CLEAR(self->as_bytes);
    return 0;
}

static void
appender_dealloc(Appender *self)
{
    PyObject_GC_UnTrack(self);
    appender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef appender_methods[] = {
    {"append", (PyCFunction)appender_append, METH_O, appender_append_doc},
    {"append_many", (PyCFunction)appender_append_many, METH_O, appender_append_many_doc},
    {"append_and_sync", (PyCFunction)appender_append_and_sync, METH_O,
     appender_append_and_sync_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef appender_members[] = {
    {"sync_to", T_OBJECT_EX, offsetof(Appender, sync_to), 0,
     "What append_and_sync calls with a record's end: the group commit's sync_to."},
    {"as_bytes", T_OBJECT_EX, offsetof(Appender, as_bytes), 0,
     "What append_and_sync calls with a record that is not bytes."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(appender_doc,
"Appender(reservations, max_record_size, inline_copy_limit, fallback_one, fallback_many)\n"
"--\n\n"
"The append fast path of one log: append() and append_many() write frames\n"
"straight into reservations.piece, else call the fallbacks with their argument.");

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.Appender",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = appender_doc,
    .tp_new = appender_new,
    .tp_dealloc = (destructor)appender_dealloc,
    .tp_traverse = (traverseproc)appender_traverse,
    .tp_clear = (inquiry)appender_clear,
    .tp_methods = appender_methods,
    .tp_members = appender_members,
};

int
is_reservations(PyObject *object)
{
    return PyObject_TypeCheck(object, &ReservationsBaseType);
}

int
add_append_types(PyObject *module)
{
    PyObject *mmap_module = PyImport_ImportModule("mmap");
    if (mmap_module == NULL) {
        return -1;
    }
    PyObject *found = PyObject_GetAttrString(mmap_module, "mmap");
    Py_DECREF(mmap_module);
    if (found == NULL) {
        return -1;
    }
    if (!PyType_Check(found)) {
        Py_DECREF(found);
        PyErr_SetString(PyExc_TypeError, "mmap.mmap is not a type");
        return -1;
    }
    mmap_type = (PyTypeObject *)found;
    if (PyType_Ready(&ReservationsBaseType) != 0 || PyType_Ready(&AppenderType) != 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "ReservationsBase", (PyObject *)&ReservationsBaseType) !=
            0 ||
        PyModule_AddObjectRef(module, "Appender", (PyObject *)&AppenderType) != 0) {
        return -1;
    }
    return 0;
}
