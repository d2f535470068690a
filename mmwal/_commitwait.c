/*
 * A follower's wait in C: follow(), for GroupCommitBase.sync_to (_commitpath.c).
 *
 * A commit that finds the token held (a leader flushing, an exclusive section)
 * or an exclusive section waiting for it waits here, as GroupCommit._sync_to
 * and GroupCommit._park do in Python, and a follower whose target a flush
 * made durable returns to its caller from here: from the wake-up to the
 * return, a few hundred nanoseconds holding the GIL and no Python frame (in
 * Python, 4-7 us of a recheck, the chain's next wake-up and the frames' returns,
 * one woken follower after another under the GIL, while the next leader
 * takes its range).
 *
 * Rules kept here (_commit.py lists all of the group commit's; the decisions
 * are CommitMachine's, mirrored line for line and held equal by
 * tests/test_commit_wait.py):
 *  - Every transition is made holding the commit lock: request's WAIT (a
 *    request counted, a caller, a waiter), park (the ticket, with the target,
 *    at the end of `parked`), recheck (one waiter less, then _decide's
 *    answers in its order: durable, broken, closed, lead, wait), unpark and
 *    abandon_wait on an exception in the wait.
 *  - The ticket is a ReservationLock this thread holds; the wait is acquiring
 *    it again with the GIL let go. A signal's handler runs during that wait,
 *    and an exception it raises ends the wait: the thread leaves the machine as
 *    if it had never waited (its ticket unparked, if not taken by a waker),
 *    passes on a wake-up it may have had, and the exception goes on.
 *  - Taking the commit lock back after the wake-up is not interruptible (it is
 *    held only for transitions): a handler's exception then comes at the next
 *    Python step, after the answer, so no wake-up is lost and the machine's
 *    counts stay whole.
 *  - A thread that goes on (any answer but WAIT) takes the next wake-up from
 *    the machine (machine_wakeups, CommitMachine.wakeups's twin) before it
 *    lets the commit lock go, and releases those tickets after (the GIL let
 *    go for the release): the next link of the chain.
 *  - Its answer: RETURN returns None; RAISE_BROKEN and RAISE_CLOSED raise
 *    through GroupCommit's own methods (the same errors as in Python); LEAD
 *    leads the flush (lead_flush, which yields once first: a thread woken to
 *    lead takes its range after the thread that woke it has appended again).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_speedups.h"

static PyObject *name_raise_broken, *name_raise_closed, *name_park, *name_recheck;

enum answer { ANSWER_RETURN, ANSWER_BROKEN, ANSWER_CLOSED, ANSWER_LEAD, ANSWER_WAIT };

/* CommitMachine._decide for a caller whose target is `wanted`. */
static enum answer
decide(Parts *parts, CommitMachineBase *machine, long long wanted)
{
    if (machine->durable_lsn >= wanted) {
        machine->callers -= 1;
        return ANSWER_RETURN;
    }
    if (machine->broken != Py_None) {
        machine->callers -= 1;
        return ANSWER_BROKEN;
    }
    if (machine->closed) {
        machine->callers -= 1;
        return ANSWER_CLOSED;
    }
    if (machine->holder == parts->holder_none && machine->exclusive_waiting == 0) {
        Py_SETREF(machine->holder, Py_NewRef(parts->holder_leader));
        return ANSWER_LEAD;
    }
    machine->waiting += 1;
    return ANSWER_WAIT;
}

/* machine.<name>(arguments...) for a transition whose precondition does not
 * hold: the Python method raises CommitProtocolError, as in Python. NULL. */
static PyObject *
illegal(CommitMachineBase *machine, PyObject *name, PyObject *ticket, PyObject *target)
{
    PyObject *arguments[3] = {(PyObject *)machine, ticket, target};
    size_t given = ticket == NULL ? 1 : 3;
    if (ticket == NULL && target != NULL) {
        arguments[1] = target;
        given = 2;
    }
    PyObject *done = PyObject_VectorcallMethod(name, arguments,
                                               given | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (done != NULL) {
        /* It did not raise: the state moved under us; stop all the same. */
        Py_DECREF(done);
        PyErr_SetString(PyExc_RuntimeError, "the commit machine's state changed unexpectedly");
    }
    return NULL;
}

/* The thread leaves its wait on an exception (pending): as GroupCommit._park's
 * except clause, holding the commit lock; the tickets to wake next go to *woken. */
static void
leave_wait(Parts *parts, CommitMachineBase *machine, PyObject *ticket, PyObject **woken)
{
    PyObject *parked = machine->parked;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parked); i++) {
        PyObject *entry = PyList_GET_ITEM(parked, i);
        if (PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2 &&
            PyTuple_GET_ITEM(entry, 1) == ticket) {
            PyList_SetSlice(parked, i, i + 1, NULL);
            break;
        }
    }
    /* abandon_wait: checked by the caller's state (a waiter counted, a caller). */
    if (machine->waiting > 0 && machine->callers > 0) {
        machine->waiting -= 1;
        machine->callers -= 1;
    }
    if (PyList_GET_SIZE(machine->parked) > 0) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        *woken = machine_wakeups(machine, parts->holder_none);
        if (*woken == NULL) {
            PyErr_Clear(); /* the first exception is the one that goes on */
        }
        PyErr_Restore(type, value, traceback);
    }
}

PyObject *
follow(GroupCommitBase *self, Parts *parts, CommitMachineBase *machine, PyObject *target,
       long long wanted)
{
    PyObject *mutex = parts->mutex;
    /* CommitMachine.request answering WAIT. */
    machine->syncs_requested += 1;
    machine->callers += 1;
    machine->waiting += 1;
    PyObject *ticket = reservation_lock_new();
    PyObject *entry = ticket == NULL ? NULL : PyTuple_Pack(2, target, ticket);
    if (entry == NULL) {
        /* As an exception in the wait: leave the machine as if never asked. */
        machine->waiting -= 1;
        machine->callers -= 1;
        reservation_lock_release(mutex);
        Py_XDECREF(ticket);
        return NULL;
    }
    reservation_lock_try(ticket);
    PyObject *woken = NULL;
    enum answer answer;
    for (;;) {
        /* CommitMachine.park */
        if (machine->waiting <= PyList_GET_SIZE(machine->parked)) {
            illegal(machine, name_park, ticket, target);
            goto failed;
        }
        if (PyList_Append(machine->parked, entry) != 0) {
            goto failed;
        }
        reservation_lock_release(mutex);
        int waited = reservation_lock_acquire(ticket, 1);
        reservation_lock_acquire(mutex, 0);
        if (waited < 0) {
            leave_wait(parts, machine, ticket, &woken);
            goto leave;
        }
        /* CommitMachine.recheck */
        if (machine->waiting <= 0) {
            illegal(machine, name_recheck, NULL, target);
            goto failed;
        }
        machine->waiting -= 1;
        answer = decide(parts, machine, wanted);
        if (answer != ANSWER_WAIT) {
            break;
        }
    }
    if (PyList_GET_SIZE(machine->parked) > 0) {
        woken = machine_wakeups(machine, parts->holder_none);
        if (woken == NULL) {
            /* Cannot happen short of memory; the answer is given all the same. */
            PyErr_Clear();
        }
    }
    reservation_lock_release(mutex);
    if (woken != NULL) {
        int released = release_tickets(woken);
        Py_DECREF(woken);
        if (released != 0) {
            /* Tickets are ReservationLocks their owners hold, whose release
             * cannot fail; this thread's answer stands whatever another's did. */
            PyErr_Clear();
        }
    }
    Py_DECREF(entry);
    Py_DECREF(ticket);
    switch (answer) {
    case ANSWER_RETURN:
        Py_RETURN_NONE;
    case ANSWER_BROKEN:
        return PyObject_CallMethodNoArgs((PyObject *)self, name_raise_broken);
    case ANSWER_CLOSED:
        return PyObject_CallMethodNoArgs((PyObject *)self, name_raise_closed);
    default:
        return lead_flush(self, parts, machine, target, 1);
    }

failed:
    /* An exception with the commit lock held, the ticket parked or not. */
    leave_wait(parts, machine, ticket, &woken);
leave:
    reservation_lock_release(mutex);
    if (woken != NULL) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (release_tickets(woken) != 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
        Py_DECREF(woken);
    }
    Py_DECREF(entry);
    Py_DECREF(ticket);
    return NULL;
}

int
add_commit_wait(void)
{
    if (intern_name(&name_raise_broken, "raise_broken") != 0 ||
        intern_name(&name_raise_closed, "_raise_closed") != 0 ||
        intern_name(&name_park, "park") != 0 || intern_name(&name_recheck, "recheck") != 0) {
        return -1;
    }
    return 0;
}
