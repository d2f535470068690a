/*
 * mmwal._speedups: the frame walk of mmwal._format in C, and the module's
 * initialisation. Built into the same extension: the append path
 * (_appendpath.c), the lone commit (_commitpath.c, _afterflush.c), the
 * reservation lock (_lock.c), the per-record loop of copy=False reads
 * (RecordViews, _recordviews.c) and the CRC-32C (_crc32c.c); _speedups.h is
 * what they share.
 *
 * scan() does what the pure-Python loops of _format.iter_frames and
 * _format._verify do: walk wal-db 1.x frames from an offset, check each length
 * against max_record_size before touching the payload, check each CRC-32C, and
 * stop at the first frame that is not good. It decides nothing else: why a walk
 * stopped is for _format.diagnose, in Python. frames() walks the same way but
 * copies no payload: it returns the LSNs, payload offsets and lengths as arrays
 * (_format.walk_frames, for RecordBatch and copy=False reads). encode_frame() and
 * encode_frames() build frames as _format's Python encoders do.
 *
 * Rules kept here:
 *  - Every read is bounds-checked against the caller's limit and the buffer
 *    length, so hostile bytes cannot read out of bounds or drive an allocation
 *    larger than max_record_size.
 *  - Every result equals the pure-Python code's for every input; the tests run
 *    both over random and hostile bytes.
 *
 * The CRC-32C is _crc32c.c's (crc_update), shared with the append fast path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_speedups.h"


/* The shortest frame walk that lets other threads run while it checks CRCs. */
#define RELEASE_GIL_BYTES ((Py_ssize_t)1 << 20)

static uint32_t
read_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* The payload length of the frame at data + pos when it is good (its length at
 * most max_record_size, its payload within limit, its CRC-32C right), else -1:
 * a walk stops there. The caller has checked that a header fits below limit.
 * One check for every walk here (scan and frames). */
static inline Py_ssize_t
good_frame_length(const unsigned char *data, Py_ssize_t pos, Py_ssize_t limit,
                  long long max_record_size)
{
    uint32_t crc = read_u32(data + pos);
    uint32_t length = read_u32(data + pos + 4);
    if ((long long)length > max_record_size ||
        (Py_ssize_t)length > limit - pos - HEADER_SIZE) {
        return -1;
    }
    uint32_t state = crc_update(0xFFFFFFFFu, data + pos + 4, 4 + (size_t)length);
    return (state ^ 0xFFFFFFFFu) == crc ? (Py_ssize_t)length : -1;
}

PyDoc_STRVAR(scan_doc,
"scan(buffer, start, limit, base, max_record_size, record_type, max_records,\n"
"     max_bytes)\n"
"--\n\n"
"Walk good frames of buffer[start:limit]; return (records, stop, walked).\n\n"
"records is a list of record_type(base + offset, payload) when record_type is\n"
"not None, else None; stop is the buffer offset of the first frame that is not\n"
"good (or where the walk ended); walked counts the good frames. The walk ends\n"
"after max_records frames, or once it has passed max_bytes bytes of frames,\n"
"when they are not negative.");

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "scan() takes exactly 8 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    Py_ssize_t base = PyLong_AsSsize_t(args[3]);
    long long max_record_size = PyLong_AsLongLong(args[4]);
    Py_ssize_t max_records = PyLong_AsSsize_t(args[6]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *record_type = args[5];
    PyTypeObject *type = NULL;
    if (record_type != Py_None) {
        if (!PyType_Check(record_type) ||
            !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass or None");
            return NULL;
        }
        type = (PyTypeObject *)record_type;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    if (limit > view.len) {
        limit = view.len;
    }
    if (start < 0) {
        start = 0;
    }
    PyObject *records = NULL;
    if (type != NULL) {
        records = PyList_New(0);
        if (records == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t pos = start;
    Py_ssize_t walked = 0;
    Py_ssize_t decoded_bytes = 0;
    /* A long walk that collects nothing touches no Python object: other threads
       may run meanwhile (the exported buffer cannot be resized or freed under
       it). A short one keeps the GIL: taking it back can wait a switch interval. */
    PyThreadState *released =
        type == NULL && limit - pos >= RELEASE_GIL_BYTES ? PyEval_SaveThread() : NULL;
    while (walked != max_records && limit - pos >= HEADER_SIZE &&
           (max_bytes < 0 || decoded_bytes < max_bytes)) {
        Py_ssize_t length = good_frame_length(data, pos, limit, max_record_size);
        if (length < 0) {
            break;
        }
        if (type != NULL) {
            PyObject *payload = PyBytes_FromStringAndSize(
                (const char *)data + pos + HEADER_SIZE, length);
            PyObject *lsn = payload ? PyLong_FromSsize_t(base + pos) : NULL;
            PyObject *record = lsn ? type->tp_alloc(type, 2) : NULL;
            if (record == NULL) {
                Py_XDECREF(payload);
                Py_XDECREF(lsn);
                Py_DECREF(records);
                PyBuffer_Release(&view);
                return NULL;
            }
            PyTuple_SET_ITEM(record, 0, lsn);
            PyTuple_SET_ITEM(record, 1, payload);
            int failed = PyList_Append(records, record);
            Py_DECREF(record);
            if (failed) {
                Py_DECREF(records);
                PyBuffer_Release(&view);
                return NULL;
            }
        }
        pos += HEADER_SIZE + length;
        decoded_bytes += HEADER_SIZE + length;
        walked++;
    }
    if (released != NULL) {
        PyEval_RestoreThread(released);
    }
    PyBuffer_Release(&view);
    if (records == NULL) {
        records = Py_None;
        Py_INCREF(records);
    }
    return Py_BuildValue("(Nnn)", records, pos, walked);
}

PyDoc_STRVAR(frames_doc,
"frames(buffer, start, limit, base, max_record_size, max_records, max_bytes)\n"
"--\n\n"
"Walk good frames of buffer[start:limit] without copying a payload.\n\n"
"Return (lsns, offsets, lengths, stop): three bytes objects of native int64\n"
"values, one per good frame (its LSN base + offset, the buffer offset of its\n"
"payload, its payload length), and the buffer offset where the walk ended.\n"
"Bounds as for scan().");

/* Grow the three int64 arrays of frames() to hold at least `needed` values. */
static int
grow_arrays(PyObject **arrays, Py_ssize_t *capacity, Py_ssize_t needed)
{
    Py_ssize_t wanted = *capacity;
    while (wanted < needed) {
        if (wanted > PY_SSIZE_T_MAX / 16) {
            PyErr_NoMemory();
            return -1;
        }
        wanted *= 2;
    }
    for (int i = 0; i < 3; i++) {
        if (_PyBytes_Resize(&arrays[i], wanted * (Py_ssize_t)sizeof(int64_t)) != 0) {
            return -1;
        }
    }
    *capacity = wanted;
    return 0;
}

static PyObject *
frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "frames() takes exactly 7 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    long long base = PyLong_AsLongLong(args[3]);
    long long max_record_size = PyLong_AsLongLong(args[4]);
    Py_ssize_t max_records = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    if (limit > view.len) {
        limit = view.len;
    }
    if (start < 0) {
        start = 0;
    }
    Py_ssize_t capacity = 256;
    PyObject *arrays[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        arrays[i] = PyBytes_FromStringAndSize(NULL, capacity * (Py_ssize_t)sizeof(int64_t));
        if (arrays[i] == NULL) {
            goto fail;
        }
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t pos = start;
    Py_ssize_t walked = 0;
    Py_ssize_t decoded_bytes = 0;
    int64_t *lsns = (int64_t *)PyBytes_AS_STRING(arrays[0]);
    int64_t *offsets = (int64_t *)PyBytes_AS_STRING(arrays[1]);
    int64_t *lengths = (int64_t *)PyBytes_AS_STRING(arrays[2]);
    while (walked != max_records && limit - pos >= HEADER_SIZE &&
           (max_bytes < 0 || decoded_bytes < max_bytes)) {
        Py_ssize_t length = good_frame_length(data, pos, limit, max_record_size);
        if (length < 0) {
            break;
        }
        if (walked == capacity) {
            if (grow_arrays(arrays, &capacity, walked + 1) != 0) {
                goto fail;
            }
            lsns = (int64_t *)PyBytes_AS_STRING(arrays[0]);
            offsets = (int64_t *)PyBytes_AS_STRING(arrays[1]);
            lengths = (int64_t *)PyBytes_AS_STRING(arrays[2]);
        }
        lsns[walked] = (int64_t)(base + pos);
        offsets[walked] = (int64_t)(pos + HEADER_SIZE);
        lengths[walked] = (int64_t)length;
        pos += HEADER_SIZE + length;
        decoded_bytes += HEADER_SIZE + length;
        walked++;
    }
    PyBuffer_Release(&view);
    for (int i = 0; i < 3; i++) {
        if (_PyBytes_Resize(&arrays[i], walked * (Py_ssize_t)sizeof(int64_t)) != 0) {
            for (int j = 0; j < 3; j++) {
                Py_XDECREF(arrays[j]);
            }
            return NULL;
        }
    }
    return Py_BuildValue("(NNNn)", arrays[0], arrays[1], arrays[2], pos);
fail:
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(arrays[i]);
    }
    PyBuffer_Release(&view);
    return NULL;
}

PyDoc_STRVAR(crc32c_doc,
"crc32c(data, value=0)\n--\n\nReturn the CRC-32C of data, continuing from value.");

static PyObject *
crc32c(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32c() takes 1 or 2 arguments");
        return NULL;
    }
    unsigned long value = 0;
    if (nargs == 2) {
        value = PyLong_AsUnsignedLongMask(args[1]);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    uint32_t state = crc_update((uint32_t)value ^ 0xFFFFFFFFu,
                                (const unsigned char *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(state ^ 0xFFFFFFFFu);
}

static void
write_u32(unsigned char *p, uint32_t value)
{
    p[0] = (unsigned char)value;
    p[1] = (unsigned char)(value >> 8);
    p[2] = (unsigned char)(value >> 16);
    p[3] = (unsigned char)(value >> 24);
}

/* Write the frame of payload at out: length, payload, then the CRC. The CRC is
 * taken over the bytes as copied, not over the source: a source another thread
 * or process changes meanwhile (a shared mmap) cannot leave a frame whose
 * checksum disagrees with its payload. */
void
put_frame(unsigned char *out, const unsigned char *payload, size_t length)
{
    write_u32(out + 4, (uint32_t)length);
    memcpy(out + HEADER_SIZE, payload, length);
    uint32_t state = crc_update(0xFFFFFFFFu, out + 4, 4 + length);
    write_u32(out, state ^ 0xFFFFFFFFu);
}

PyDoc_STRVAR(encode_frames_doc,
"encode_frames(payloads)\n--\n\n"
"Return the frames of a list of bytes back to back.");

static PyObject *
encode_frames(PyObject *module, PyObject *payloads)
{
    if (!PyList_CheckExact(payloads)) {
        PyErr_SetString(PyExc_TypeError, "encode_frames() takes a list of bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(payloads);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "encode_frames() takes a list of bytes");
            return NULL;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(item);
        if (length > (Py_ssize_t)0xFFFFFFFFu || total > PY_SSIZE_T_MAX - HEADER_SIZE - length) {
            PyErr_SetString(PyExc_OverflowError, "frames too large");
            return NULL;
        }
        total += HEADER_SIZE + length;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        uint32_t length = (uint32_t)PyBytes_GET_SIZE(item);
        put_frame(out, (const unsigned char *)PyBytes_AS_STRING(item), length);
        out += HEADER_SIZE + length;
    }
    return result;
}

PyDoc_STRVAR(encode_frame_doc,
"encode_frame(payload)\n--\n\nReturn the frame of one bytes payload.");

static PyObject *
encode_frame(PyObject *module, PyObject *payload)
{
    if (!PyBytes_CheckExact(payload)) {
        PyErr_SetString(PyExc_TypeError, "encode_frame() takes bytes");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(payload);
    if (length > (Py_ssize_t)0xFFFFFFFFu) {
        PyErr_SetString(PyExc_OverflowError, "payload too large for a frame");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + length);
    if (result == NULL) {
        return NULL;
    }
    put_frame((unsigned char *)PyBytes_AS_STRING(result),
              (const unsigned char *)PyBytes_AS_STRING(payload), (uint32_t)length);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_frame", (PyCFunction)encode_frame, METH_O, encode_frame_doc},
    {"encode_frames", (PyCFunction)encode_frames, METH_O, encode_frames_doc},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {"frames", (PyCFunction)(void (*)(void))frames, METH_FASTCALL, frames_doc},
    {"crc32c", (PyCFunction)(void (*)(void))crc32c, METH_FASTCALL, crc32c_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT,
    "mmwal._speedups",
    "The frame walk of mmwal._format and the append path in C; see _speedups.c, _appendpath.c.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    int hardware_crc = crc_setup();
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "HARDWARE_CRC", hardware_crc) != 0 ||
        add_record_views_type(module) != 0 || add_lock_type(module) != 0 ||
        add_append_types(module) != 0 || add_commit_machine_type(module) != 0 ||
        add_commit_types(module) != 0 || add_afterflush_types(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
