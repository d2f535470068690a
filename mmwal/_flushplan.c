/*
 * The leader's flush by plan (mmwal._speedups): the plan a store published
 * (Store.plan_window) and the fdatasync it names, for the lone commit's path
 * (_commitpath.c).
 *
 * Rules kept here:
 *  - A published window is used only for a range it covers whole
 *    (low <= start < end <= high); anything else asks Store.flush_plan, and a
 *    window of the wrong shape is a TypeError (the leader gives the token back).
 *  - A store that is no mmwal.Store subclass has no plan_window: it is asked.
 *  - The fdatasync runs with the GIL released; EINTR runs the signal handlers
 *    and retries, as os.fdatasync does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <unistd.h>

#include "_speedups.h"

static PyObject *name_plan_window;

int
add_flush_plan(void)
{
    return intern_name(&name_plan_window, "plan_window");
}

/* The plan the store published for [start, end) (Store.plan_window): a new
 * reference, or NULL with no exception when the window is absent or does not
 * cover the range (then flush_plan is asked), or NULL with one. One attribute
 * read: a flush_plan call made cold, after the last flush's sleep, cost a
 * commit about 6 us. */
PyObject *
published_plan(PyObject *store, long long start, long long end)
{
    PyObject *window = PyObject_GetAttr(store, name_plan_window);
    if (window == NULL) {
        /* A store that is no mmwal.Store subclass has no window: ask it. */
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *plan = NULL;
    if (PyTuple_CheckExact(window) && PyTuple_GET_SIZE(window) == 3) {
        long long low = PyLong_AsLongLong(PyTuple_GET_ITEM(window, 0));
        long long high = PyLong_AsLongLong(PyTuple_GET_ITEM(window, 1));
        if (PyErr_Occurred()) {
            Py_DECREF(window);
            return NULL;
        }
        if (low <= start && start < end && end <= high) {
            plan = Py_NewRef(PyTuple_GET_ITEM(window, 2));
        }
    }
    else if (window != Py_None) {
        PyErr_SetString(PyExc_TypeError, "Store.plan_window must be (low, high, plan) or None");
    }
    Py_DECREF(window);
    return plan;
}

/* fdatasync(fd) with the GIL released, as os.fdatasync: 0, or -1 with an exception. */
int
data_sync(int fd)
{
    for (;;) {
        int result;
        Py_BEGIN_ALLOW_THREADS
        result = fdatasync(fd);
        Py_END_ALLOW_THREADS
        if (result == 0) {
            return 0;
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() != 0) {
            return -1;
        }
    }
}
