/*
 * What a flush leader does once its flush returned, in C (mmwal._speedups):
 * EndsPublisherBase.flushed (the state file's update, mmwal._published) and
 * PointKeeperBase.note_flushed (whether a recovery point is due,
 * mmwal._recovery_point), and put_ends_slot, the update's bytes.
 *
 * These run after the flush's sleep, with cold caches, on every commit: a
 * Python frame there costs microseconds (perf/commit_syscalls.py and
 * docs/DESIGN.md, "Costs that remain"). Each base holds its class's fields as C
 * members, read and written from Python as plain attributes; without the
 * extension the same bases are Python classes with the same methods, the
 * reference (tests/test_commit_fast_path.py proves both agree).
 *
 * Rules kept here:
 *  - flushed changes only what EndsPublisher._write_slot changes (the
 *    sequence, the slot's four moving words and CRC, the slot in the mapping)
 *    and forgets what was said, as the Python method does.
 *  - note_flushed answers as PointKeeper.note_flushed's rules say, from the
 *    same fields, and records the durable range it was given.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

#include "_speedups.h"

/* -- put_ends_slot ------------------------------------------------------------------- */

static void
put_le64(unsigned char *out, unsigned long long value)
{
    for (int i = 0; i < 8; i++) {
        out[i] = (unsigned char)(value >> (8 * i));
    }
}

/* The slot's words at offset 8, its CRC in its last 4 bytes, its copy in the
 * mapping at position: 0, or -1 with an exception. */
static int
put_slot(PyObject *mapping_object, PyObject *slot_object, Py_ssize_t position,
         const unsigned long long words[4])
{
    Py_buffer slot, mapping;
    if (PyObject_GetBuffer(slot_object, &slot, PyBUF_WRITABLE) != 0) {
        return -1;
    }
    if (PyObject_GetBuffer(mapping_object, &mapping, PyBUF_WRITABLE) != 0) {
        PyBuffer_Release(&slot);
        return -1;
    }
    int result = -1;
    if (slot.len < 8 + 32 + 4 || position < 0 || position > mapping.len - slot.len) {
        PyErr_SetString(PyExc_ValueError, "the ends slot does not fit");
    }
    else {
        unsigned char *bytes = slot.buf;
        for (int i = 0; i < 4; i++) {
            put_le64(bytes + 8 + 8 * i, words[i]);
        }
        uint32_t crc = crc_update(0xFFFFFFFFu, bytes, (size_t)(slot.len - 4)) ^ 0xFFFFFFFFu;
        for (int i = 0; i < 4; i++) {
            bytes[slot.len - 4 + i] = (unsigned char)(crc >> (8 * i));
        }
        memcpy((unsigned char *)mapping.buf + position, bytes, (size_t)slot.len);
        result = 0;
    }
    PyBuffer_Release(&mapping);
    PyBuffer_Release(&slot);
    return result;
}

PyDoc_STRVAR(put_ends_slot_doc,
"put_ends_slot(mapping, slot, position, sequence, written, durable, head, /)\n--\n\n"
"Pack the four words a flush changes into slot at offset 8 (little-endian u64:\n"
"sequence, written, durable, head), the CRC-32C of slot[:-4] into its last 4\n"
"bytes (little-endian), and copy slot to mapping[position:].");

static PyObject *
put_ends_slot(PyObject *module, PyObject *const *args, Py_ssize_t count)
{
    if (count != 7) {
        PyErr_SetString(PyExc_TypeError, "put_ends_slot takes 7 arguments");
        return NULL;
    }
    unsigned long long words[4];
    for (int i = 0; i < 4; i++) {
        words[i] = PyLong_AsUnsignedLongLong(args[3 + i]);
        if (words[i] == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_ssize_t position = PyLong_AsSsize_t(args[2]);
    if (position == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (put_slot(args[0], args[1], position, words) != 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- EndsPublisherBase ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *mapping; /* the state file's mapping */
    PyObject *slot;    /* the next slot's bytes (a bytearray) */
    PyObject *said;    /* what the file says now, or None */
    unsigned long long sequence;
    Py_ssize_t stride; /* the distance between the two slots */
} EndsPublisherBase;

static PyObject *
publisher_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    EndsPublisherBase *self = (EndsPublisherBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->mapping = Py_NewRef(Py_None);
    self->slot = Py_NewRef(Py_None);
    self->said = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
publisher_traverse(EndsPublisherBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mapping);
    Py_VISIT(self->slot);
    Py_VISIT(self->said);
    return 0;
}

static int
publisher_clear(EndsPublisherBase *self)
{
    Py_CLEAR(self->mapping);
    Py_CLEAR(self->slot);
    Py_CLEAR(self->said);
    return 0;
}

static void
publisher_dealloc(EndsPublisherBase *self)
{
    PyObject_GC_UnTrack(self);
    publisher_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(publisher_flushed_doc,
"flushed(end, head, /)\n--\n\n"
"Publish a flush that made everything below end written and durable.");

static PyObject *
publisher_flushed(EndsPublisherBase *self, PyObject *const *args, Py_ssize_t count)
{
    if (count != 2) {
        PyErr_SetString(PyExc_TypeError, "flushed takes 2 arguments (end, head)");
        return NULL;
    }
    unsigned long long end = PyLong_AsUnsignedLongLong(args[0]);
    if (end == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long long head = PyLong_AsUnsignedLongLong(args[1]);
    if (head == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    /* The next publish writes whatever it is given. */
    Py_SETREF(self->said, Py_NewRef(Py_None));
    unsigned long long sequence = self->sequence += 1;
    unsigned long long words[4] = {sequence, end, end, head};
    if (put_slot(self->mapping, self->slot, (Py_ssize_t)(sequence & 1) * self->stride, words) !=
        0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef publisher_methods[] = {
    {"flushed", (PyCFunction)(void (*)(void))publisher_flushed, METH_FASTCALL,
     publisher_flushed_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef publisher_members[] = {
    {"_mapping", T_OBJECT_EX, offsetof(EndsPublisherBase, mapping), 0, "The state file."},
    {"_slot", T_OBJECT_EX, offsetof(EndsPublisherBase, slot), 0, "The next slot's bytes."},
    {"_said", T_OBJECT_EX, offsetof(EndsPublisherBase, said), 0,
     "What the file says now, or None."},
    {"_sequence", T_ULONGLONG, offsetof(EndsPublisherBase, sequence), 0,
     "The sequence of the last update."},
    {"_stride", T_PYSSIZET, offsetof(EndsPublisherBase, stride), 0,
     "The distance between the two slots."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(publisher_doc,
"EndsPublisherBase()\n--\n\n"
"The fields of EndsPublisher a flush changes, as C members, and flushed().");

static PyTypeObject EndsPublisherBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.EndsPublisherBase",
    .tp_basicsize = sizeof(EndsPublisherBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = publisher_doc,
    .tp_new = publisher_new,
    .tp_dealloc = (destructor)publisher_dealloc,
    .tp_traverse = (traverseproc)publisher_traverse,
    .tp_clear = (inquiry)publisher_clear,
    .tp_methods = publisher_methods,
    .tp_members = publisher_members,
};

/* -- PointKeeperBase ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *flushed;   /* (start, end): the last durable range that held records */
    PyObject *saved_end; /* the end the point on disk vouches for, or None */
    double saved_at;
    double quiet_until;
    double interval_seconds;
    long long interval_bytes;
    long long unit;
    char enabled;
} PointKeeperBase;

static PyObject *
keeper_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PointKeeperBase *self = (PointKeeperBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->flushed = Py_NewRef(Py_None);
    self->saved_end = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
keeper_traverse(PointKeeperBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->flushed);
    Py_VISIT(self->saved_end);
    return 0;
}

static int
keeper_clear(PointKeeperBase *self)
{
    Py_CLEAR(self->flushed);
    Py_CLEAR(self->saved_end);
    return 0;
}

static void
keeper_dealloc(PointKeeperBase *self)
{
    PyObject_GC_UnTrack(self);
    keeper_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(keeper_note_flushed_doc,
"note_flushed(start, end, now, /)\n--\n\n"
"Note that [start, end) is durable at now; return whether a point is due.");

static PyObject *
keeper_note_flushed(PointKeeperBase *self, PyObject *const *args, Py_ssize_t count)
{
    if (count != 3) {
        PyErr_SetString(PyExc_TypeError, "note_flushed takes 3 arguments (start, end, now)");
        return NULL;
    }
    long long start = PyLong_AsLongLong(args[0]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long long end = PyLong_AsLongLong(args[1]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (end <= start) {
        Py_RETURN_FALSE;
    }
    PyObject *range = PyTuple_Pack(2, args[0], args[1]);
    if (range == NULL) {
        return NULL;
    }
    Py_SETREF(self->flushed, range);
    if (!self->enabled || now < self->quiet_until) {
        Py_RETURN_FALSE;
    }
    if (self->saved_end == Py_None) {
        Py_RETURN_TRUE;
    }
    long long saved = PyLong_AsLongLong(self->saved_end);
    if (saved == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long long unit = self->unit;
    /* Python's // floors; both operands are LSNs (never negative) and unit > 0. */
    int due = saved > end || end - saved >= self->interval_bytes ||
              (unit > 0 && end / unit != saved / unit) ||
              now - self->saved_at >= self->interval_seconds;
    return PyBool_FromLong(due);
}

static PyMethodDef keeper_methods[] = {
    {"note_flushed", (PyCFunction)(void (*)(void))keeper_note_flushed, METH_FASTCALL,
     keeper_note_flushed_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef keeper_members[] = {
    {"_flushed", T_OBJECT_EX, offsetof(PointKeeperBase, flushed), 0,
     "The last durable range that held records."},
    {"saved_end", T_OBJECT_EX, offsetof(PointKeeperBase, saved_end), 0,
     "The end the point on disk vouches for, or None."},
    {"_saved_at", T_DOUBLE, offsetof(PointKeeperBase, saved_at), 0,
     "When the last point was written (perf_counter)."},
    {"_quiet_until", T_DOUBLE, offsetof(PointKeeperBase, quiet_until), 0,
     "Flushes write no point before this (after a failed write)."},
    {"_interval_seconds", T_DOUBLE, offsetof(PointKeeperBase, interval_seconds), 0,
     "A point is due once this long passed since the last."},
    {"_interval_bytes", T_LONGLONG, offsetof(PointKeeperBase, interval_bytes), 0,
     "A point is due once this many bytes became durable since the last."},
    {"_unit", T_LONGLONG, offsetof(PointKeeperBase, unit), 0,
     "The store's unit size (a point is due when the durable end enters a new unit)."},
    {"_enabled", T_BOOL, offsetof(PointKeeperBase, enabled), 0,
     "Whether the store keeps side files."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(keeper_doc,
"PointKeeperBase()\n--\n\n"
"The fields of PointKeeper a flush reads, as C members, and note_flushed().");

static PyTypeObject PointKeeperBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.PointKeeperBase",
    .tp_basicsize = sizeof(PointKeeperBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = keeper_doc,
    .tp_new = keeper_new,
    .tp_dealloc = (destructor)keeper_dealloc,
    .tp_traverse = (traverseproc)keeper_traverse,
    .tp_clear = (inquiry)keeper_clear,
    .tp_methods = keeper_methods,
    .tp_members = keeper_members,
};

static PyMethodDef afterflush_functions[] = {
    {"put_ends_slot", (PyCFunction)(void (*)(void))put_ends_slot, METH_FASTCALL,
     put_ends_slot_doc},
    {NULL, NULL, 0, NULL},
};

int
add_afterflush_types(PyObject *module)
{
    if (PyType_Ready(&EndsPublisherBaseType) != 0 || PyType_Ready(&PointKeeperBaseType) != 0 ||
        PyModule_AddFunctions(module, afterflush_functions) != 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "EndsPublisherBase", (PyObject *)&EndsPublisherBaseType) !=
            0 ||
        PyModule_AddObjectRef(module, "PointKeeperBase", (PyObject *)&PointKeeperBaseType) != 0) {
        return -1;
    }
    return 0;
}
