/*
 * The leader's commit path in C: GroupCommitBase (mmwal._speedups).
 *
 * It moves the machine's fields (CommitMachineBase, _commitmachine.c) directly.
 * GroupCommitBase holds what mmwal._commit.GroupCommit's flush reads
 * (the machine, the commit lock, the reservations, the store) and its
 * sync_to(target): a sync that would lead (the token free), whether alone or
 * with others committing, with nothing in flight and a store whose flush is
 * one fdatasync, runs here from the request to the flush's return and through
 * the steps after it, no Python frame on the way; a sync told to wait waits
 * in C (follow, _commitwait.c) and, woken to lead, leads here; a target
 * already durable is answered here. Everything else (a broken or closed log,
 * a flush that is not one fdatasync) goes to the Python path
 * (GroupCommit._sync_to, GroupCommit._flush_as_leader) untouched.
 *
 * Rules kept here (_commit.py lists all of the group commit's):
 *  - It decides holding the commit lock (tried, else waited for with the GIL
 *    let go), as CommitMachine.request would: the target durable (RETURN:
 *    one more request), broken or closed (the Python path), the token free
 *    and no exclusive section waiting (LEAD: one more request, one caller,
 *    the token to a leader: tests/test_commit_fast_path.py proves them
 *    equal; it lets the lock go and leads), else WAIT (follow).
 *  - From there on it is the leader and does what GroupCommit._lead_flush does,
 *    or calls _flush_as_leader for the rest: one sched_yield when others are
 *    inside a sync or it was woken to lead, the watermark read under the
 *    reservation lock when no copy is in flight and no hole (else
 *    _flush_as_leader waits for the copies), the flush (Store.plan_window
 *    when it covers the range, else Store.flush_plan: one fdatasync and
 *    nothing owed before it, else _flush_as_leader flushes), and on a
 *    failure the same _flush_failed /
 *    _flush_abandoned that give the token back; then GroupCommit._finish_flush's
 *    steps (finish below), waking whom the machine names (machine_wakeups).
 *  - The fdatasync runs with the GIL released; EINTR runs the signal handlers
 *    and retries (as os.fdatasync); a Syscalls that is not the plain one is
 *    called instead (Store.flush_plan hands its fdatasync over), so injected
 *    faults reach this path too.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <structmember.h>
#include <unistd.h>

#include "_speedups.h"

static PyObject *perf_counter; /* time.perf_counter, looked up once */
static PyObject *name_flush_as_leader, *name_sync_to, *name_write_point, *name_flush_failed,
    *name_flush_abandoned, *name_flush_plan, *name_in_flight, *name_hole,
    *name_wake_followers, *name_head_lsn, *name_flushed, *name_note_flushed;

/* -- GroupCommitBase -------------------------------------------------------------- */

static PyObject *
group_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    GroupCommitBase *self = (GroupCommitBase *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->machine = Py_NewRef(Py_None);
    self->mutex = Py_NewRef(Py_None);
    self->reservations = Py_NewRef(Py_None);
    self->store = Py_NewRef(Py_None);
    self->points = Py_NewRef(Py_None);
    self->publisher = Py_NewRef(Py_None);
    self->holder_none = Py_NewRef(Py_None);
    self->holder_leader = Py_NewRef(Py_None);
    self->holder_point = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
group_traverse(GroupCommitBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->machine);
    Py_VISIT(self->mutex);
    Py_VISIT(self->reservations);
    Py_VISIT(self->store);
    Py_VISIT(self->points);
    Py_VISIT(self->publisher);
    Py_VISIT(self->holder_none);
    Py_VISIT(self->holder_leader);
    Py_VISIT(self->holder_point);
    return 0;
}

static int
group_clear(GroupCommitBase *self)
{
    Py_CLEAR(self->machine);
    Py_CLEAR(self->mutex);
    Py_CLEAR(self->reservations);
    Py_CLEAR(self->store);
    Py_CLEAR(self->points);
    Py_CLEAR(self->publisher);
    Py_CLEAR(self->holder_none);
    Py_CLEAR(self->holder_leader);
    Py_CLEAR(self->holder_point);
    return 0;
}

static void
group_dealloc(GroupCommitBase *self)
{
    PyObject_GC_UnTrack(self);
    group_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* self.<name>(target): the Python path from where the fast path stops. */
PyObject *
call_python(GroupCommitBase *self, PyObject *name, PyObject *target)
{
    PyObject *arguments[2] = {(PyObject *)self, target};
    return PyObject_VectorcallMethod(name, arguments, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* A failure between taking the token and the flush's return, as _lead_flush's
 * except clauses: an OSError breaks the log (_flush_failed raises
 * WalBrokenError from it), anything else gives the token back
 * (_flush_abandoned) and the error goes on. Always NULL. */
static PyObject *
flush_went_wrong(GroupCommitBase *self)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    PyObject *done;
    if (PyErr_GivenExceptionMatches(type, PyExc_OSError)) {
        PyObject *arguments[2] = {(PyObject *)self, value};
        done = PyObject_VectorcallMethod(name_flush_failed, arguments,
                                         2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        done = PyObject_CallMethodNoArgs((PyObject *)self, name_flush_abandoned);
    }
    if (done == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return NULL;
    }
    Py_DECREF(done);
    PyErr_Restore(type, value, traceback);
    return NULL;
}

/* The commit lock, taken: tried, else waited for with the GIL let go (held
 * briefly by whoever holds it, for a transition: a signal's handler runs
 * once it is taken, not in the middle). 0 held. */
static int
take_mutex(Parts *parts)
{
    return reservation_lock_acquire(parts->mutex, 0) == 1 ? 0 : -1;
}

/* CommitMachine.flush_done(flush_to, seconds, writing_point=...) for the
 * leader's flush; when the token is not a leader's, the machine's own method
 * answers (it raises CommitProtocolError). 1 someone waits, 0 not, -1 an exception. */
static int
flush_done(Parts *parts, CommitMachineBase *machine, long long flush_to, double seconds,
           int writing_point)
{
    if (machine->holder != parts->holder_leader) {
        PyObject *method = PyObject_GetAttrString((PyObject *)machine, "flush_done");
        PyObject *arguments = method == NULL ? NULL : Py_BuildValue("(Ld)", flush_to, seconds);
        PyObject *keywords = arguments == NULL ? NULL
                                               : Py_BuildValue("{s:O}", "writing_point",
                                                               writing_point ? Py_True : Py_False);
        PyObject *result = keywords == NULL ? NULL : PyObject_Call(method, arguments, keywords);
        Py_XDECREF(method);
        Py_XDECREF(arguments);
        Py_XDECREF(keywords);
        if (result == NULL) {
            return -1;
        }
        int notify = PyObject_IsTrue(result);
        Py_DECREF(result);
        return notify;
    }
    if (flush_to > machine->durable_lsn) {
        machine->durable_lsn = flush_to;
    }
    machine->flushes += 1;
    machine->flush_seconds += seconds;
    if (writing_point) {
        Py_SETREF(machine->holder, Py_NewRef(parts->holder_point));
    }
    else {
        Py_SETREF(machine->holder, Py_NewRef(parts->holder_none));
        machine->callers -= 1;
    }
    return machine->waiting > 0;
}

/* GroupCommit._finish_flush: publish the ends, note the flush for the recovery
 * point, move the durable end and give the token back (or keep it to write a
 * point, then give it back), waking whom the machine names. */
static PyObject *
finish(GroupCommitBase *self, Parts *parts, CommitMachineBase *machine, PyObject *start, PyObject *end,
       PyObject *head, long long flush_to, double seconds, PyObject *flushed_at)
{
    int writing_point = 0;
    int failed = 0;
    PyObject *publisher = parts->publisher;
    if (publisher != Py_None && head != NULL) {
        Py_INCREF(publisher);
        PyObject *arguments[3] = {publisher, end, head};
        PyObject *published = PyObject_VectorcallMethod(name_flushed, arguments,
                                                        3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(publisher);
        if (published == NULL) {
            failed = 1;
        }
        else {
            Py_DECREF(published);
        }
    }
    if (!failed) {
        PyObject *arguments[4] = {parts->points, start, end, flushed_at};
        PyObject *due = PyObject_VectorcallMethod(name_note_flushed, arguments,
                                                  4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (due == NULL) {
            failed = 1;
        }
        else {
            writing_point = PyObject_IsTrue(due);
            Py_DECREF(due);
            if (writing_point < 0) {
                failed = 1;
                writing_point = 0;
            }
        }
    }
    /* As `finally:` - whatever happened above, the flush is done. */
    PyObject *type = NULL, *value = NULL, *traceback = NULL;
    if (failed) {
        PyErr_Fetch(&type, &value, &traceback);
    }
    int waiters = -1;
    PyObject *tickets = NULL;
    if (take_mutex(parts) == 0) {
        waiters = flush_done(parts, machine, flush_to, seconds, writing_point);
        if (waiters > 0) {
            /* As GroupCommit._waking: the tickets the machine names, taken
             * holding the commit lock and released once it is let go, the GIL
             * let go for the releases. */
            tickets = machine_wakeups(machine, parts->holder_none);
            if (tickets == NULL) {
                waiters = -1;
            }
        }
        reservation_lock_release(parts->mutex);
        if (tickets != NULL) {
            if (release_tickets(tickets) != 0) {
                waiters = -1;
            }
            Py_DECREF(tickets);
        }
    }
    if (waiters < 0) {
        /* An exception from the `finally` part replaces the first one. */
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return NULL;
    }
    if (failed) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    if (writing_point) {
        PyObject *arguments[3] = {(PyObject *)self, start, end};
        return PyObject_VectorcallMethod(name_write_point, arguments,
                                         3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    Py_RETURN_NONE;
}

/* Lead a flush that the fast path began: the token is held (the machine says
 * LEADER) and the commit lock is free. As GroupCommit._lead_flush: when others
 * are committing too, or this thread was woken to lead (`waited`), let the GIL
 * go once (sched_yield) before the range is taken; every step after the yield
 * that this path does not take goes to GroupCommit._flush_as_leader, which
 * does not yield again. */
PyObject *
lead_flush(GroupCommitBase *self, Parts *parts, CommitMachineBase *machine, PyObject *target,
           int waited)
{
    if (waited || machine->callers > 1) {
        self->leader_yields += 1;
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
    ReservationsBase *reservations = (ReservationsBase *)parts->reservations;
    PyObject *lock = reservations->lock;
    if (!is_reservation_lock(lock) || !reservation_lock_try(lock)) {
        return call_python(self, name_flush_as_leader, target);
    }
    /* Reservations.written_lsn is next_lsn while nothing is in flight and no
     * copy failed; otherwise _lead_flush waits for the copies below the target. */
    PyObject *in_flight = PyObject_GetAttr((PyObject *)reservations, name_in_flight);
    PyObject *hole = in_flight == NULL ? NULL : PyObject_GetAttr((PyObject *)reservations, name_hole);
    int simple = hole != NULL && PyDict_CheckExact(in_flight) && PyDict_GET_SIZE(in_flight) == 0 &&
                 hole == Py_None && machine->broken == Py_None;
    long long flush_to = reservations->next_lsn;
    reservation_lock_release(lock);
    Py_XDECREF(in_flight);
    Py_XDECREF(hole);
    if (PyErr_Occurred()) {
        return flush_went_wrong(self);
    }
    if (!simple) {
        return call_python(self, name_flush_as_leader, target);
    }
    PyObject *start = PyLong_FromLongLong(machine->durable_lsn);
    PyObject *end = start == NULL ? NULL : PyLong_FromLongLong(flush_to);
    if (end == NULL) {
        Py_XDECREF(start);
        return flush_went_wrong(self);
    }
    PyObject *plan = published_plan(parts->store, machine->durable_lsn, flush_to);
    if (plan == NULL && !PyErr_Occurred()) {
        PyObject *arguments[3] = {parts->store, start, end};
        plan = PyObject_VectorcallMethod(name_flush_plan, arguments,
                                         3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    PyObject *result = NULL;
    PyObject *began = NULL, *flushed_at = NULL, *head = NULL;
    double seconds;
    if (plan == NULL) {
        flush_went_wrong(self);
        goto done;
    }
    if (plan == Py_None) {
        result = call_python(self, name_flush_as_leader, target);
        goto done;
    }
    /* (fd, sync): sync None for the plain fdatasync, else the Syscalls' own. */
    if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 2) {
        PyErr_SetString(PyExc_TypeError, "Store.flush_plan must return (fd, sync) or None");
        flush_went_wrong(self);
        goto done;
    }
    PyObject *descriptor = PyTuple_GET_ITEM(plan, 0);
    PyObject *sync = PyTuple_GET_ITEM(plan, 1);
    began = PyObject_CallNoArgs(perf_counter);
    if (began == NULL) {
        flush_went_wrong(self);
        goto done;
    }
    if (sync == Py_None) {
        long fd = PyLong_AsLong(descriptor);
        if ((fd == -1 && PyErr_Occurred()) || data_sync((int)fd) != 0) {
            flush_went_wrong(self);
            goto done;
        }
    }
    else {
        PyObject *synced = PyObject_CallOneArg(sync, descriptor);
        if (synced == NULL) {
            flush_went_wrong(self);
            goto done;
        }
        Py_DECREF(synced);
    }
    flushed_at = PyObject_CallNoArgs(perf_counter);
    seconds = flushed_at == NULL ? -1.0 : PyFloat_AsDouble(flushed_at) - PyFloat_AsDouble(began);
    if (flushed_at == NULL || PyErr_Occurred()) {
        flush_went_wrong(self);
        goto done;
    }
    /* The head, for the ends published: only a truncation moves it, and none
     * runs while this leader holds the token. Read after the flush, not
     * before: every step between the watermark and the fdatasync delays the
     * write's start (a Python frame there cost the commit twice its own time). */
    if (parts->publisher != Py_None) {
        head = PyObject_GetAttr(parts->store, name_head_lsn);
        if (head == NULL) {
            flush_went_wrong(self);
            goto done;
        }
    }
    /* Store.release(end) has nothing to do: the plan says so. */
    {
        PyObject *finished =
            finish(self, parts, machine, start, end, head, flush_to, seconds, flushed_at);
        if (finished == NULL) {
            goto done;
        }
        Py_DECREF(finished);
    }
    if (reservations->followers_waiting) {
        PyObject *woken = PyObject_CallMethodNoArgs((PyObject *)reservations, name_wake_followers);
        if (woken == NULL) {
            goto done;
        }
        Py_DECREF(woken);
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(began);
    Py_XDECREF(flushed_at);
    Py_XDECREF(head);
    Py_XDECREF(plan);
    Py_DECREF(start);
    Py_DECREF(end);
    return result;
}

PyDoc_STRVAR(group_sync_to_doc,
"sync_to(target, /)\n--\n\n"
"Return once every byte below target is durable (group commit).");

static PyObject *
group_sync_to(GroupCommitBase *self, PyObject *target)
{
    /* What the path uses, held for its length: a member replaced (or deleted)
     * meanwhile, while the GIL is let go for a wait or the flush, cannot free it. */
    Parts parts = {self->machine,     self->mutex,         self->reservations, self->store,
                   self->points,      self->publisher,     self->holder_none,  self->holder_leader,
                   self->holder_point};
    PyObject *held[] = {parts.machine,     parts.mutex,       parts.reservations, parts.store,
                        parts.points,      parts.publisher,   parts.holder_none,  parts.holder_leader,
                        parts.holder_point};
    const size_t count = sizeof(held) / sizeof(held[0]);
    for (size_t i = 0; i < count; i++) {
        if (held[i] == NULL) {
            return call_python(self, name_sync_to, target);
        }
    }
    if (self->readonly || !PyLong_CheckExact(target) ||
        !is_commit_machine(parts.machine) || !PyList_CheckExact(((CommitMachineBase *)parts.machine)->parked) ||
        !is_reservation_lock(parts.mutex) || !is_reservations(parts.reservations)) {
        return call_python(self, name_sync_to, target);
    }
    int overflow = 0;
    long long wanted = PyLong_AsLongLongAndOverflow(target, &overflow);
    if (overflow != 0 || (wanted == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return call_python(self, name_sync_to, target);
    }
    for (size_t i = 0; i < count; i++) {
        Py_INCREF(held[i]);
    }
    PyObject *result;
    reservation_lock_acquire(parts.mutex, 0);
    CommitMachineBase *machine = (CommitMachineBase *)parts.machine;
    if (machine->durable_lsn >= wanted) {
        /* CommitMachine.request answers RETURN: counted, and no caller left. */
        machine->syncs_requested += 1;
        reservation_lock_release(parts.mutex);
        result = Py_NewRef(Py_None);
    }
    else if (machine->broken != Py_None || machine->closed) {
        reservation_lock_release(parts.mutex);
        result = call_python(self, name_sync_to, target);
    }
    else if (machine->holder != parts.holder_none || machine->exclusive_waiting != 0) {
        /* request answers WAIT: follow (_commitwait.c), which lets the lock go. */
        result = follow(self, &parts, machine, target, wanted);
    }
    else {
        /* CommitMachine.request in this state: counted, a caller, and the token
         * taken by a leader (the LEAD answer of _decide, whoever else is inside a
         * sync or waiting). */
        machine->syncs_requested += 1;
        machine->callers += 1;
        Py_SETREF(machine->holder, Py_NewRef(parts.holder_leader));
        reservation_lock_release(parts.mutex);
        result = lead_flush(self, &parts, machine, target, 0);
    }
    for (size_t i = 0; i < count; i++) {
        Py_DECREF(held[i]);
    }
    return result;
}

static PyMethodDef group_methods[] = {
    {"sync_to", (PyCFunction)group_sync_to, METH_O, group_sync_to_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef group_members[] = {
    {"_machine", T_OBJECT_EX, offsetof(GroupCommitBase, machine), 0, "The CommitMachine."},
    {"_mutex", T_OBJECT_EX, offsetof(GroupCommitBase, mutex), 0,
     "The commit lock (a ReservationLock)."},
    {"_reservations", T_OBJECT_EX, offsetof(GroupCommitBase, reservations), 0,
     "The log's Reservations."},
    {"_store", T_OBJECT_EX, offsetof(GroupCommitBase, store), 0, "The log's store."},
    {"_points", T_OBJECT_EX, offsetof(GroupCommitBase, points), 0, "The PointKeeper."},
    {"publisher", T_OBJECT_EX, offsetof(GroupCommitBase, publisher), 0,
     "Publishes the ends to followers in other processes, or None."},
    {"_holder_point", T_OBJECT_EX, offsetof(GroupCommitBase, holder_point), 0, "Holder.POINT."},
    {"_holder_none", T_OBJECT_EX, offsetof(GroupCommitBase, holder_none), 0, "Holder.NONE."},
    {"_holder_leader", T_OBJECT_EX, offsetof(GroupCommitBase, holder_leader), 0,
     "Holder.LEADER."},
    {"leader_yields", T_LONGLONG, offsetof(GroupCommitBase, leader_yields), 0,
     "How many times a leader let the GIL go once before taking its range."},
    {"_readonly", T_BOOL, offsetof(GroupCommitBase, readonly), 0,
     "Whether the handle is read-only (it flushes nothing)."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(group_doc,
"GroupCommitBase()\n--\n\n"
"What GroupCommit's flush reads, as C members, and the lone commit's sync_to.");

static PyTypeObject GroupCommitBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mmwal._speedups.GroupCommitBase",
    .tp_basicsize = sizeof(GroupCommitBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = group_doc,
    .tp_new = group_new,
    .tp_dealloc = (destructor)group_dealloc,
    .tp_traverse = (traverseproc)group_traverse,
    .tp_clear = (inquiry)group_clear,
    .tp_members = group_members,
    .tp_methods = group_methods,
};

int
intern_name(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

int
add_commit_types(PyObject *module)
{
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) {
        return -1;
    }
    perf_counter = PyObject_GetAttrString(time_module, "perf_counter");
    Py_DECREF(time_module);
    if (perf_counter == NULL) {
        return -1;
    }
    if (intern_name(&name_flush_as_leader, "_flush_as_leader") != 0 ||
        intern_name(&name_sync_to, "_sync_to") != 0 ||
        intern_name(&name_write_point, "_write_point") != 0 ||
        intern_name(&name_head_lsn, "head_lsn") != 0 ||
        intern_name(&name_flushed, "flushed") != 0 ||
        intern_name(&name_note_flushed, "note_flushed") != 0 ||
        intern_name(&name_flush_failed, "_flush_failed") != 0 ||
        intern_name(&name_flush_abandoned, "_flush_abandoned") != 0 ||
        intern_name(&name_flush_plan, "flush_plan") != 0 ||
        intern_name(&name_in_flight, "in_flight") != 0 ||
        intern_name(&name_hole, "hole") != 0 ||
        intern_name(&name_wake_followers, "wake_followers") != 0) {
        return -1;
    }
    if (add_commit_wait() != 0 || add_flush_plan() != 0 ||
        PyType_Ready(&GroupCommitBaseType) != 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "GroupCommitBase", (PyObject *)&GroupCommitBaseType) != 0) {
        return -1;
    }
    return 0;
}
