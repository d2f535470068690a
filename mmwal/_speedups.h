/*
 * What the C files of mmwal._speedups share: the frame header size, the CRC-32C
 * of _crc32c.c, the append fast path's types (_appendpath.c), the commit
 * machine's fields (_commitmachine.c), the commit in C (_commitpath.c,
 * _commitwait.c, _afterflush.c), the reservation lock (_lock.c) and RecordViews
 * (_recordviews.c).
 * Names stay internal to the extension.
 */
#ifndef MMWAL_SPEEDUPS_H
#define MMWAL_SPEEDUPS_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define HEADER_SIZE 8

#if defined(__GNUC__)
#define MMWAL_INTERNAL __attribute__((visibility("hidden")))
#else
#define MMWAL_INTERNAL
#endif

/* Continue the CRC-32C register `crc` (not inverted) over data[0:length]
 * (_crc32c.c). */
MMWAL_INTERNAL uint32_t crc_update(uint32_t crc, const unsigned char *data, size_t length);

/* Build the CRC tables and pick the instructions; once, before any crc_update.
 * Returns whether SSE4.2 instructions are used. */
MMWAL_INTERNAL int crc_setup(void);

/* Write the frame (header and payload, HEADER_SIZE + length bytes) of payload at
 * out (_speedups.c); the payload must not overlap out. */
MMWAL_INTERNAL void put_frame(unsigned char *out, const unsigned char *payload, size_t length);

/* The fields of mmwal._reservations.Reservations the append fast path (and the
 * lone commit's, _commitpath.c) reads and moves. */
typedef struct {
    PyObject_HEAD
    long long next_lsn;
    long long fast_limit;
    long long piece_base;
    long long appends;
    long long followers_waiting;
    PyObject *piece; /* never NULL */
    PyObject *lock;  /* never NULL */
} ReservationsBase;

/* Add ReservationsBase and Appender to the module; -1 with an exception on failure. */
MMWAL_INTERNAL int add_append_types(PyObject *module);

/* Whether an object is a ReservationsBase (or a subclass's instance). */
MMWAL_INTERNAL int is_reservations(PyObject *object);

/* Add RecordViews, the per-record loop of copy=False reads (_recordviews.c); -1 with
 * an exception. */
MMWAL_INTERNAL int add_record_views_type(PyObject *module);

/* The fields of mmwal._commit_machine.CommitMachine (_commitmachine.c), which the
 * lone commit's path (_commitpath.c) reads and moves. */
typedef struct {
    PyObject_HEAD
    long long durable_lsn;
    long long callers;
    long long waiting;
    long long syncs_requested;
    long long flushes;
    long long exclusive_waiting;
    long long wakeups_issued;
    double flush_seconds;
    PyObject *parked;    /* never NULL: the parked tickets (a list), None before __init__ */
    PyObject *holder;    /* never NULL */
    PyObject *broken;    /* never NULL: None or the error */
    PyObject *broken_by; /* never NULL */
    char closed;
} CommitMachineBase;

/* Add CommitMachineBase (_commitmachine.c); -1 with an exception. */
MMWAL_INTERNAL int add_commit_machine_type(PyObject *module);

/* Whether an object is a CommitMachineBase (or a subclass's instance). */
MMWAL_INTERNAL int is_commit_machine(PyObject *object);

/* CommitMachine.wakeups (_commitmachine.c): take out the parked tickets to wake
 * now, by the machine's rules; a new list, or NULL with an exception. Call with
 * the commit lock held. `holder_none` is Holder.NONE. */
MMWAL_INTERNAL PyObject *machine_wakeups(CommitMachineBase *machine, PyObject *holder_none);

/* GroupCommitBase (_commitpath.c): what mmwal._commit.GroupCommit's flush
 * reads, as members. */
typedef struct {
    PyObject_HEAD
    PyObject *machine;      /* a CommitMachineBase, or None before __init__ */
    PyObject *mutex;        /* the commit lock: a ReservationLock, or None */
    PyObject *reservations; /* a ReservationsBase, or None */
    PyObject *store;
    PyObject *points;        /* the PointKeeper */
    PyObject *publisher;     /* the EndsPublisher, or None */
    PyObject *holder_none;   /* Holder.NONE */
    PyObject *holder_leader; /* Holder.LEADER */
    PyObject *holder_point;  /* Holder.POINT */
    long long leader_yields; /* how many times a leader let the GIL go before its range */
    char readonly;
} GroupCommitBase;

/* The members a commit in C uses, held (strong references) while it runs. */
typedef struct {
    PyObject *machine; /* a CommitMachineBase (checked) */
    PyObject *mutex;   /* a ReservationLock (checked) */
    PyObject *reservations;
    PyObject *store;
    PyObject *points;
    PyObject *publisher;
    PyObject *holder_none;
    PyObject *holder_leader;
    PyObject *holder_point;
} Parts;

/* Add GroupCommitBase (_commitpath.c); -1 with an exception. */
MMWAL_INTERNAL int add_commit_types(PyObject *module);

/* Lead a flush whose token this thread holds, the commit lock free
 * (_commitpath.c); `waited`: it was woken to lead, and yields once. */
MMWAL_INTERNAL PyObject *lead_flush(GroupCommitBase *self, Parts *parts,
                                    CommitMachineBase *machine, PyObject *target, int waited);

/* A follower's wait in C (_commitwait.c): called holding the commit lock in a
 * state where CommitMachine.request answers WAIT for `wanted`; returns as
 * GroupCommit._sync_to does (None, or NULL with its exception), the lock let go. */
MMWAL_INTERNAL PyObject *follow(GroupCommitBase *self, Parts *parts, CommitMachineBase *machine,
                                PyObject *target, long long wanted);

/* Intern the names follow() calls (_commitwait.c); -1 with an exception. */
MMWAL_INTERNAL int add_commit_wait(void);

/* self.<name>(argument) (_commitpath.c): a Python method of GroupCommit. */
MMWAL_INTERNAL PyObject *call_python(GroupCommitBase *self, PyObject *name, PyObject *argument);

/* Add EndsPublisherBase, PointKeeperBase and put_ends_slot (_afterflush.c); -1 with an
 * exception. */
MMWAL_INTERNAL int add_afterflush_types(PyObject *module);

/* The reservation lock (_lock.c): add its type; whether an object is one; take
 * it if free (1) or not (0), never waiting; let it go (it must be held). */
MMWAL_INTERNAL int add_lock_type(PyObject *module);
MMWAL_INTERNAL int is_reservation_lock(PyObject *object);
MMWAL_INTERNAL int reservation_lock_try(PyObject *lock);
MMWAL_INTERNAL void reservation_lock_release(PyObject *lock);
MMWAL_INTERNAL int release_tickets(PyObject *tickets);
/* A new ReservationLock, or NULL with an exception. */
MMWAL_INTERNAL PyObject *reservation_lock_new(void);
/* Take a ReservationLock, waiting with the GIL let go. `interruptible`: a
 * signal's handler runs during the wait and an exception it raises ends it
 * (-1); otherwise the wait goes on to the end and the handler runs later. 1
 * taken, -1 an exception. */
MMWAL_INTERNAL int reservation_lock_acquire(PyObject *lock, int interruptible);

/* The leader's flush by plan (_flushplan.c): the plan `store` published for
 * [start, end) (a new reference; NULL with no exception when it has none that
 * covers the range, NULL with one on an error), and fdatasync(fd) with the GIL
 * released (0, or -1 with an exception). */
MMWAL_INTERNAL PyObject *published_plan(PyObject *store, long long start, long long end);
MMWAL_INTERNAL int data_sync(int fd);
/* Intern _flushplan.c's attribute name, once, before published_plan; -1 with an exception. */
MMWAL_INTERNAL int add_flush_plan(void);

/* *slot = the interned string `text` (_commitpath.c, for the commit path's
 * files); 0, or -1 with an exception. */
MMWAL_INTERNAL int intern_name(PyObject **slot, const char *text);

#endif
