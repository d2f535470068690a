/*
 * RecordViews: the per-record loop of copy=False reads, in C (mmwal._speedups;
 * the Python twin is mmwal._recordviews.RecordViewsPython).
 *
 * A Python feed hands out runs of good frames (a memoryview and the int64 LSN,
 * payload offset and length arrays frames() returns for it; the CRCs were
 * checked by frames()); this type yields record_type(lsn, data) for each, data
 * a read-only memoryview made by slicing the run's view through the public
 * mapping protocol (so it pins the run's exporter until released).
 *
 * Rules kept here:
 *  - The view yielded last is released (memoryview.release) before the next
 *    record is made, by close() and by release_views(); the object holds no
 *    other export of the run's memory between calls.
 *  - release_views() (called by the log before it truncates or unmaps) drops
 *    the run: the next record is then asked of the feed, with its LSN, so the
 *    Python side checks it survived before anything more is yielded. So is a
 *    run during which release_views() was called.
 *  - remote, when the feed gives one, is a buffer of one uint64 (a writer's
 *    truncation counter in another process): when it no longer holds `seen`
 *    the next record is asked of the feed too, before it is made.
 *  - A run whose view is found released (a truncation or close in another
 *    thread released the reader's batch and has not reached release_views()
 *    yet) is a release too: the next record is asked of the feed by its LSN.
 *  - A feed that raises, or returns None, ends the iteration.
 *  - No I/O here: the feed does that.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_speedups.h"

static PyObject *memoryview_release; /* memoryview.release, looked up once */

typedef struct {
    PyObject_HEAD
    PyObject *feed;            /* feed(lsn or None) -> run tuple or None */
    PyTypeObject *record_type; /* a tuple subclass of two items */
    PyObject *view;            /* the run's memoryview, or NULL: no run */
    Py_buffer index[3];        /* the run's lsns, offsets and lengths */
    Py_ssize_t view_length;
    Py_ssize_t next;           /* index of the next record of the run */
    Py_ssize_t count;
    Py_buffer remote;          /* valid when has_remote */
    int has_remote;
    uint64_t seen;
    PyObject *held;            /* the data view yielded last */
    uint64_t releases;         /* release_views() calls so far */
    int64_t resume_at;         /* the LSN to ask the feed for next, or -1 */
    int finished;
    PyObject *weakrefs;
} RecordViews;

/* Whether a run's memoryview was released (its own flag, or its managed buffer's). */
static int
run_released(PyObject *view)
{
    PyMemoryViewObject *memory = (PyMemoryViewObject *)view;
    return (memory->flags & _Py_MEMORYVIEW_RELEASED) != 0 ||
           (memory->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED) != 0;
}

static int64_t
index_at(const Py_buffer *buffer, Py_ssize_t i)
{
    int64_t value;
    memcpy(&value, (const char *)buffer->buf + i * (Py_ssize_t)sizeof(int64_t), sizeof(value));
    return value;
}

static void
views_drop_run(RecordViews *self)
{
    if (self->view != NULL) {
        for (int i = 0; i < 3; i++) {
            PyBuffer_Release(&self->index[i]);
        }
        Py_CLEAR(self->view);
    }
    if (self->has_remote) {
        self->has_remote = 0;
        PyBuffer_Release(&self->remote);
    }
    self->next = self->count = 0;
}

/* Release the view yielded last; -1 with an exception when it cannot be (exported on). */
static int
views_release_held(RecordViews *self)
{
    PyObject *held = self->held;
    if (held == NULL) {
        return 0;
    }
    self->held = NULL;
    if (Py_REFCNT(held) == 1) {
        Py_DECREF(held); /* nobody else can touch it: freeing it releases it */
        return 0;
    }
    PyObject *done = PyObject_CallOneArg(memoryview_release, held);
    Py_DECREF(held);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static void
views_finish(RecordViews *self)
{
    self->finished = 1;
    views_drop_run(self);
    Py_CLEAR(self->feed);
}

/* Take a run from the feed: 1 a run, 0 the end, -1 an exception. */
static int
views_refill(RecordViews *self)
{
    int64_t resume_at = self->resume_at;
    if (resume_at < 0 && self->view != NULL && self->next < self->count) {
        resume_at = index_at(&self->index[0], self->next);
    }
    PyObject *argument = resume_at < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(resume_at);
    if (argument == NULL) {
        return -1;
    }
    self->resume_at = -1;
    views_drop_run(self);
    uint64_t releases = self->releases;
    PyObject *run = PyObject_CallOneArg(self->feed, argument);
    Py_DECREF(argument);
    if (run == NULL) {
        return -1;
    }
    if (run == Py_None) {
        Py_DECREF(run);
        return 0;
    }
    if (!PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 6 ||
        !PyMemoryView_Check(PyTuple_GET_ITEM(run, 0))) {
        Py_DECREF(run);
        PyErr_SetString(PyExc_TypeError,
                        "a feed returns (view, lsns, offsets, lengths, remote, seen) or None");
        return -1;
    }
    PyObject *view = PyTuple_GET_ITEM(run, 0);
    if (run_released(view)) {
        /* Released before the walk took it: ask again from the run's first record. */
        Py_buffer lsns;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(run, 1), &lsns, PyBUF_SIMPLE) != 0) {
            Py_DECREF(run);
            return -1;
        }
        if (lsns.len >= (Py_ssize_t)sizeof(int64_t)) {
            self->resume_at = index_at(&lsns, 0);
        }
        PyBuffer_Release(&lsns);
        Py_DECREF(run);
        return 1;
    }
    PyObject *remote = PyTuple_GET_ITEM(run, 4);
    unsigned long long seen = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(run, 5));
    if (seen == (unsigned long long)-1 && PyErr_Occurred()) {
        Py_DECREF(run);
        return -1;
    }
    /* The run's length only: holding an export of it would stop the reader
     * that owns it from releasing it. */
    Py_buffer probe;
    if (PyObject_GetBuffer(view, &probe, PyBUF_SIMPLE) != 0) {
        Py_DECREF(run);
        return -1;
    }
    Py_ssize_t view_length = probe.len;
    PyBuffer_Release(&probe);
    Py_buffer *whole = PyMemoryView_GET_BUFFER(view);
    if (whole->ndim != 1 || whole->itemsize != 1 || !PyBuffer_IsContiguous(whole, 'C') ||
        (whole->format != NULL && strcmp(whole->format, "B") != 0)) {
        Py_DECREF(run);
        PyErr_SetString(PyExc_TypeError, "a run's view must be a 1-D memoryview of bytes");
        return -1;
    }
    int taken = 0;
    for (; taken < 3; taken++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(run, 1 + taken), &self->index[taken],
                               PyBUF_SIMPLE) != 0) {
            goto fail;
        }
    }
    if (self->index[1].len != self->index[0].len || self->index[2].len != self->index[0].len ||
        self->index[0].len % (Py_ssize_t)sizeof(int64_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "lsns, offsets and lengths differ in length");
        goto fail;
    }
    if (remote != Py_None) {
        if (PyObject_GetBuffer(remote, &self->remote, PyBUF_SIMPLE) != 0) {
            goto fail;
        }
        if (self->remote.len < (Py_ssize_t)sizeof(uint64_t)) {
            PyBuffer_Release(&self->remote);
            PyErr_SetString(PyExc_ValueError, "remote holds no uint64");
            goto fail;
        }
        self->has_remote = 1;
    }
    Py_INCREF(view);
    self->view = view;
    self->view_length = view_length;
    self->next = 0;
    self->count = self->index[0].len / (Py_ssize_t)sizeof(int64_t);
    self->seen = (uint64_t)seen;
    Py_DECREF(run);
    if (self->releases != releases) {
        /* Released while the feed ran: the run may be gone; ask again from its start. */
        if (self->count > 0) {
            self->resume_at = index_at(&self->index[0], 0);
        }
        views_drop_run(self);
    }
    return 1;
fail:
    for (int i = 0; i < taken; i++) {
        PyBuffer_Release(&self->index[i]);
    }
    Py_DECREF(run);
    return -1;
}

static int
views_remote_moved(const RecordViews *self)
{
    uint64_t value;
    memcpy(&value, self->remote.buf, sizeof(value));
    return value != self->seen;
}

static PyObject *
views_next(RecordViews *self)
{
    if (views_release_held(self) != 0) {
        views_finish(self);
        return NULL;
    }
    uint64_t releases = self->releases;
    for (;;) {
        if (self->finished) {
            return NULL;
        }
        if (self->view == NULL || self->next >= self->count ||
            (self->has_remote && views_remote_moved(self))) {
            int got = views_refill(self);
            if (got <= 0) {
                views_finish(self);
                return NULL;
            }
            releases = self->releases;
            continue;
        }
        Py_ssize_t i = self->next;
        if (run_released(self->view)) {
            self->resume_at = index_at(&self->index[0], i);
            views_drop_run(self);
            continue;
        }
        int64_t offset = index_at(&self->index[1], i);
        int64_t length = index_at(&self->index[2], i);
        if (offset < 0 || length < 0 || offset > self->view_length ||
            length > self->view_length - offset) {
            PyErr_SetString(PyExc_IndexError, "a record lies outside the view");
            views_finish(self);
            return NULL;
        }
        /* A new view on the run's managed buffer (as view[:] makes), narrowed as
         * memoryview slicing narrows a contiguous 1-D byte view: buf, len,
         * shape. Slicing through the mapping protocol gives the same view but
         * costs a slice and two ints per record (a third of the loop). */
        PyObject *data = PyMemoryView_FromObject(self->view);
        if (data != NULL) {
            Py_buffer *part = PyMemoryView_GET_BUFFER(data);
            part->buf = (char *)part->buf + offset;
            part->len = (Py_ssize_t)length;
            part->shape[0] = (Py_ssize_t)length;
        }
        PyObject *lsn = data ? PyLong_FromLongLong(index_at(&self->index[0], i)) : NULL;
        PyObject *record = lsn ? self->record_type->tp_alloc(self->record_type, 2) : NULL;
        if (record == NULL) {
            Py_XDECREF(data);
            Py_XDECREF(lsn);
            views_finish(self);
            return NULL;
        }
        PyTuple_SET_ITEM(record, 0, lsn);
        PyTuple_SET_ITEM(record, 1, data);
        /* An int and a view of a mapping: never in a reference cycle. */
        PyObject_GC_UnTrack(record);
        if (self->releases != releases) {
            /* release_views() ran while the record was made (a collection ran
             * code that truncated): the view may point at what is going away. */
            PyObject *done = PyObject_CallOneArg(memoryview_release, data);
            Py_DECREF(record);
            if (done == NULL) {
                views_finish(self);
                return NULL;
            }
            Py_DECREF(done);
            continue;
        }
        Py_INCREF(data);
        self->held = data;
        self->next = i + 1;
        return record;
    }
}

PyDoc_STRVAR(views_release_views_doc,
"release_views()\n--\n\n"
"Release the view yielded last and drop the run: the next record is asked of the feed.");

static PyObject *
views_release_views(RecordViews *self, PyObject *Py_UNUSED(unused))
{
    self->releases++;
    if (self->view != NULL && self->next < self->count) {
        self->resume_at = index_at(&self->index[0], self->next);
    }
    views_drop_run(self);
    if (views_release_held(self) != 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}
PyDoc_STRVAR(views_close_doc,
"close()\n--\n\nRelease the view yielded last and end the iteration.");

static PyObject *
views_close(RecordViews *self, PyObject *Py_UNUSED(unused))
{
    int failed = views_release_held(self);
    views_finish(self);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
views_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *feed, *record_type;
    static char *keywords[] = {"feed", "record_type", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:RecordViews", keywords, &feed,
                                     &record_type)) {
        return NULL;
    }
    if (!PyCallable_Check(feed)) {
        PyErr_SetString(PyExc_TypeError, "feed must be callable");
        return NULL;
    }
    if (!PyType_Check(record_type) ||
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass");
        return NULL;
    }
    RecordViews *self = (RecordViews *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->feed = Py_NewRef(feed);
    self->record_type = (PyTypeObject *)Py_NewRef(record_type);
    self->resume_at = -1;
    return (PyObject *)self;
}

static int
views_traverse(RecordViews *self, visitproc visit, void *arg)
{
    Py_VISIT(self->feed);
    Py_VISIT(self->record_type);
    Py_VISIT(self->view);
    Py_VISIT(self->held);
    return 0;
}

static int
views_clear(RecordViews *self)
{
    Py_CLEAR(self->held);
    views_finish(self);
    Py_CLEAR(self->record_type);
    return 0;
}

static void
views_dealloc(RecordViews *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (views_release_held(self) != 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    views_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef views_methods[] = {
    {"release_views", (PyCFunction)views_release_views, METH_NOARGS, views_release_views_doc},
    {"close", (PyCFunction)views_close, METH_NOARGS, views_close_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(views_doc,
"RecordViews(feed, record_type)\n--\n\n"
"Iterate record_type(lsn, data) over runs of frames a feed hands out.\n\n"
"feed(lsn) returns the next run, (view, lsns, offsets, lengths, remote, seen), or\n"
"None at the end: view a memoryview of bytes; lsns, offsets and lengths buffers\n"
"of native int64 values indexing it (as frames() returns them); remote None or a\n"
"buffer of one uint64 expected to hold seen. Record i of a run has LSN lsns[i]\n"
"and data view[offsets[i] : offsets[i] + lengths[i]], a new memoryview released\n"
"when the iterator advances, at release_views() and at close(). lsn is None when\n"
"the last run is used up, else the LSN of the next record, asked again after\n"
"release_views() or once remote no longer holds seen. The records are not tracked\n"
"by the cyclic GC: view's exporter must not refer to them.");

static PyTypeObject RecordViewsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.RecordViews",
    .tp_basicsize = sizeof(RecordViews),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = views_doc,
    .tp_new = views_new,
    .tp_dealloc = (destructor)views_dealloc,
    .tp_traverse = (traverseproc)views_traverse,
    .tp_clear = (inquiry)views_clear,
    .tp_weaklistoffset = offsetof(RecordViews, weakrefs),
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)views_next,
    .tp_methods = views_methods,
};

int
add_record_views_type(PyObject *module)
{
    if (PyType_Ready(&RecordViewsType) != 0) {
        return -1;
    }
    memoryview_release = PyObject_GetAttrString((PyObject *)&PyMemoryView_Type, "release");
    if (memoryview_release == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "RecordViews", (PyObject *)&RecordViewsType);
}
