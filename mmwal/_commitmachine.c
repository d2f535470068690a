/*
 * CommitMachineBase (mmwal._speedups): the fields of
 * mmwal._commit_machine.CommitMachine as C members.
 *
 * Read and written from Python as plain attributes; CommitMachine subclasses it
 * and keeps every rule (its methods are the one statement of them). The
 * commit in C (_commitpath.c, _commitwait.c) reads and moves the same fields
 * directly through the struct in _speedups.h, and takes wake-ups with
 * machine_wakeups, CommitMachine.wakeups's twin.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

#include "_speedups.h"

static PyObject *
machine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    CommitMachineBase *self = (CommitMachineBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->holder = Py_NewRef(Py_None);
    self->parked = Py_NewRef(Py_None);
    self->broken = Py_NewRef(Py_None);
    self->broken_by = PyUnicode_FromStringAndSize(NULL, 0);
    if (self->broken_by == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
machine_traverse(CommitMachineBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->holder);
    Py_VISIT(self->parked);
    Py_VISIT(self->broken);
    Py_VISIT(self->broken_by);
    return 0;
}

static int
machine_clear(CommitMachineBase *self)
{
    Py_CLEAR(self->holder);
    Py_CLEAR(self->parked);
    Py_CLEAR(self->broken);
    Py_CLEAR(self->broken_by);
    return 0;
}

static void
machine_dealloc(CommitMachineBase *self)
{
    PyObject_GC_UnTrack(self);
    machine_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef machine_members[] = {
    {"durable_lsn", T_LONGLONG, offsetof(CommitMachineBase, durable_lsn), 0,
     "The end of what the last completed flush covered."},
    {"callers", T_LONGLONG, offsetof(CommitMachineBase, callers), 0,
     "Threads inside a sync, waiting or leading."},
    {"waiting", T_LONGLONG, offsetof(CommitMachineBase, waiting), 0,
     "Threads told to wait that have not asked again."},
    {"syncs_requested", T_LONGLONG, offsetof(CommitMachineBase, syncs_requested), 0,
     "How many syncs were asked for."},
    {"flushes", T_LONGLONG, offsetof(CommitMachineBase, flushes), 0,
     "How many flushes a leader completed."},
    {"exclusive_waiting", T_LONGLONG, offsetof(CommitMachineBase, exclusive_waiting), 0,
     "Of the waiting, the threads waiting for the exclusive section."},
    {"wakeups_issued", T_LONGLONG, offsetof(CommitMachineBase, wakeups_issued), 0,
     "How many tickets wakeups named."},
    {"parked", T_OBJECT_EX, offsetof(CommitMachineBase, parked), 0,
     "The tickets of waiting threads not woken yet, with their targets."},
    {"flush_seconds", T_DOUBLE, offsetof(CommitMachineBase, flush_seconds), 0,
     "The time the leaders' flushes took, in seconds."},
    {"holder", T_OBJECT_EX, offsetof(CommitMachineBase, holder), 0,
     "Who holds the one-flusher token (a Holder)."},
    {"broken", T_OBJECT_EX, offsetof(CommitMachineBase, broken), 0,
     "The error that broke the log, or None."},
    {"broken_by", T_OBJECT_EX, offsetof(CommitMachineBase, broken_by), 0,
     "What broke the log."},
    {"closed", T_BOOL, offsetof(CommitMachineBase, closed), 0, "Whether close has run."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(machine_doc,
"CommitMachineBase()\n--\n\n"
"The fields of CommitMachine, as C members the lone commit's path reads and moves.");

static PyTypeObject CommitMachineBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.CommitMachineBase",
    .tp_basicsize = sizeof(CommitMachineBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = machine_doc,
    .tp_new = machine_new,
    .tp_dealloc = (destructor)machine_dealloc,
    .tp_traverse = (traverseproc)machine_traverse,
    .tp_clear = (inquiry)machine_clear,
    .tp_members = machine_members,
};

/* Remove parked[index] and append its ticket to woken; 0, or -1 with an exception. */
static int
take_ticket(PyObject *parked, Py_ssize_t index, PyObject *woken)
{
    PyObject *entry = PyList_GET_ITEM(parked, index);
    int appended = PyList_Append(woken, PyTuple_GET_ITEM(entry, 1));
    if (appended != 0) {
        return -1;
    }
    return PyList_SetSlice(parked, index, index + 1, NULL);
}

/* CommitMachine.wakeups, line for line (the Python method is the rule; the
 * tests hold the two equal): every ticket when broken or closed; otherwise the
 * first parked caller whose target is durable; otherwise, the token free, the
 * first parked exclusive waiter or, none waiting, the first parked caller. */
PyObject *
machine_wakeups(CommitMachineBase *machine, PyObject *holder_none)
{
    PyObject *parked = machine->parked;
    if (!PyList_CheckExact(parked)) {
        return PyObject_CallMethod((PyObject *)machine, "wakeups", NULL);
    }
    Py_ssize_t count = PyList_GET_SIZE(parked);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(parked, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
            return PyObject_CallMethod((PyObject *)machine, "wakeups", NULL);
        }
    }
    PyObject *woken = PyList_New(0);
    if (woken == NULL || count == 0) {
        return woken;
    }
    if (machine->broken != Py_None || machine->closed) {
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PyList_Append(woken, PyTuple_GET_ITEM(PyList_GET_ITEM(parked, i), 1)) != 0) {
                Py_DECREF(woken);
                return NULL;
            }
        }
        if (PyList_SetSlice(parked, 0, count, NULL) != 0) {
            Py_DECREF(woken);
            return NULL;
        }
    }
    else {
        Py_ssize_t chosen = -1;
        for (Py_ssize_t i = 0; i < count && chosen < 0; i++) {
            PyObject *target = PyTuple_GET_ITEM(PyList_GET_ITEM(parked, i), 0);
            if (target == Py_None) {
                continue;
            }
            long long at = PyLong_AsLongLong(target);
            if (at == -1 && PyErr_Occurred()) {
                Py_DECREF(woken);
                return NULL;
            }
            if (at <= machine->durable_lsn) {
                chosen = i;
            }
        }
        if (chosen < 0 && machine->holder == holder_none) {
            /* The token taker: the first parked exclusive waiter, else the
             * first parked thread; none while an exclusive waiter woken
             * earlier has not asked again (the token is its). */
            if (machine->exclusive_waiting == 0) {
                chosen = 0;
            }
            else {
                Py_ssize_t exclusive = 0, first = -1;
                for (Py_ssize_t i = 0; i < count; i++) {
                    if (PyTuple_GET_ITEM(PyList_GET_ITEM(parked, i), 0) == Py_None) {
                        exclusive += 1;
                        first = first < 0 ? i : first;
                    }
                }
                if (exclusive >= machine->exclusive_waiting) {
                    chosen = first;
                }
            }
        }
        if (chosen >= 0 && take_ticket(parked, chosen, woken) != 0) {
            Py_DECREF(woken);
            return NULL;
        }
    }
    machine->wakeups_issued += PyList_GET_SIZE(woken);
    return woken;
}

static PyObject *
wakeups_in_c(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !is_commit_machine(args[0])) {
        PyErr_SetString(PyExc_TypeError, "machine_wakeups(machine, holder_none)");
        return NULL;
    }
    return machine_wakeups((CommitMachineBase *)args[0], args[1]);
}

static PyMethodDef machine_functions[] = {
    {"machine_wakeups", (PyCFunction)(void (*)(void))wakeups_in_c, METH_FASTCALL,
     "machine_wakeups(machine, holder_none, /)\n--\n\n"
     "CommitMachine.wakeups as the commit in C takes it (for the tests)."},
    {NULL, NULL, 0, NULL},
};

int
is_commit_machine(PyObject *object)
{
    return PyObject_TypeCheck(object, &CommitMachineBaseType);
}

int
add_commit_machine_type(PyObject *module)
{
    if (PyModule_AddFunctions(module, machine_functions) != 0) {
        return -1;
    }
    if (PyType_Ready(&CommitMachineBaseType) != 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "CommitMachineBase", (PyObject *)&CommitMachineBaseType);
}
