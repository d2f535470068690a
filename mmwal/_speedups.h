/*
 * What the C files of mmwal._speedups share: the frame header size, the CRC-32C
 * of _speedups.c, and the registration of the append fast path's types
 * (_appendpath.c). Names stay internal to the extension.
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

/* Continue the CRC-32C register `crc` (not inverted) over data[0:length]. */
MMWAL_INTERNAL uint32_t crc_update(uint32_t crc, const unsigned char *data, size_t length);

/* Add ReservationsBase and Appender to the module; -1 with an exception on failure. */
MMWAL_INTERNAL int add_append_types(PyObject *module);

#endif
