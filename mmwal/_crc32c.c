/*
 * CRC-32C for mmwal._speedups: Castagnoli, reflected polynomial 0x82F63B78,
 * init and xorout 0xFFFFFFFF. SSE4.2 instructions where the CPU has them, else
 * slicing-by-8. The frame walk (_speedups.c) and the append fast path
 * (_appendpath.c) share crc_update; crc_setup builds the tables once, at import.
 *
 * Rules kept here:
 *  - crc_update gives the same register for every input whichever way it runs
 *    (tables or instructions); tests/test_speedups.py checks both against the
 *    pure-Python CRC of mmwal._crc.
 *  - Nothing here allocates or touches Python objects: safe with the GIL let go.
 */
#include <stddef.h>
#include <stdint.h>

#include "_speedups.h"

static uint32_t crc_table[8][256];

static void
crc_init_tables(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) {
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        }
        crc_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            crc = crc_table[0][crc & 0xFF] ^ (crc >> 8);
            crc_table[k][n] = crc;
        }
    }
}

static uint32_t
crc_update_table(uint32_t crc, const unsigned char *data, size_t length)
{
    while (length && ((uintptr_t)data & 7)) {
        crc = crc_table[0][(crc ^ *data++) & 0xFF] ^ (crc >> 8);
        length--;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, data, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        word = __builtin_bswap64(word);
#endif
        word ^= crc;
        crc = crc_table[7][word & 0xFF] ^ crc_table[6][(word >> 8) & 0xFF] ^
              crc_table[5][(word >> 16) & 0xFF] ^ crc_table[4][(word >> 24) & 0xFF] ^
              crc_table[3][(word >> 32) & 0xFF] ^ crc_table[2][(word >> 40) & 0xFF] ^
              crc_table[1][(word >> 48) & 0xFF] ^ crc_table[0][word >> 56];
        data += 8;
        length -= 8;
    }
    while (length--) {
        crc = crc_table[0][(crc ^ *data++) & 0xFF] ^ (crc >> 8);
    }
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_HARDWARE_CRC 1

/*
 * Three interleaved streams. One crc32 instruction takes 3 cycles but a new one
 * can start every cycle, so a single dependent chain runs at a third of the
 * unit's throughput. Long inputs are cut into three equal blocks whose CRCs are
 * computed side by side (the second and third from a zero register) and joined:
 * crc(A B) = shift(crc(A), |B|) ^ crc0(B), where shift() appends |B| zero bytes
 * to a CRC register, a linear map applied here with four table lookups
 * (crc_shift_tables, built once at import from the polynomial's matrix). The
 * method is Mark Adler's, as in the crc32c package.
 */
#define CRC_LONG 8192
#define CRC_SHORT 256
#define CRC_TINY 64
static uint32_t crc_shift_long[4][256];
static uint32_t crc_shift_short[4][256];
static uint32_t crc_shift_tiny[4][256];

static uint32_t
gf2_matrix_times(const uint32_t *matrix, uint32_t vector)
{
    uint32_t sum = 0;
    while (vector) {
        if (vector & 1) {
            sum ^= *matrix;
        }
        vector >>= 1;
        matrix++;
    }
    return sum;
}

static void
gf2_matrix_square(uint32_t *square, const uint32_t *matrix)
{
    for (int n = 0; n < 32; n++) {
        square[n] = gf2_matrix_times(matrix, matrix[n]);
    }
}

/* Build the tables that append `length` zero bytes (a power of two) to a CRC register. */
static void
crc_shift_tables(uint32_t tables[4][256], size_t length)
{
    uint32_t even[32], odd[32];
    odd[0] = 0x82F63B78u; /* one zero bit */
    uint32_t row = 1;
    for (int n = 1; n < 32; n++) {
        odd[n] = row;
        row <<= 1;
    }
    gf2_matrix_square(even, odd); /* two zero bits */
    gf2_matrix_square(odd, even); /* four zero bits */
    const uint32_t *op = odd;
    for (;;) {
        gf2_matrix_square(even, odd); /* 1, 4, 16, ... zero bytes */
        op = even;
        length >>= 1;
        if (length == 0) {
            break;
        }
        gf2_matrix_square(odd, even); /* 2, 8, 32, ... zero bytes */
        op = odd;
        length >>= 1;
        if (length == 0) {
            break;
        }
    }
    for (uint32_t n = 0; n < 256; n++) {
        tables[0][n] = gf2_matrix_times(op, n);
        tables[1][n] = gf2_matrix_times(op, n << 8);
        tables[2][n] = gf2_matrix_times(op, n << 16);
        tables[3][n] = gf2_matrix_times(op, n << 24);
    }
}

static uint32_t
crc_shift(uint32_t tables[4][256], uint32_t crc)
{
    return tables[0][crc & 0xFF] ^ tables[1][(crc >> 8) & 0xFF] ^ tables[2][(crc >> 16) & 0xFF] ^
           tables[3][crc >> 24];
}

static uint64_t
load_u64(const unsigned char *p)
{
    uint64_t word;
    memcpy(&word, p, 8);
    return word;
}

/* CRC three blocks of `block` bytes side by side from `crc`; return the joined register. */
__attribute__((target("sse4.2"))) static uint32_t
crc_three_blocks(uint32_t crc, const unsigned char *data, size_t block, uint32_t tables[4][256])
{
    uint64_t crc0 = crc, crc1 = 0, crc2 = 0;
    const unsigned char *end = data + block;
    while (data < end) {
        crc0 = __builtin_ia32_crc32di(crc0, load_u64(data));
        crc1 = __builtin_ia32_crc32di(crc1, load_u64(data + block));
        crc2 = __builtin_ia32_crc32di(crc2, load_u64(data + 2 * block));
        data += 8;
    }
    uint32_t joined = crc_shift(tables, (uint32_t)crc0) ^ (uint32_t)crc1;
    return crc_shift(tables, joined) ^ (uint32_t)crc2;
}

__attribute__((target("sse4.2"))) static uint32_t
crc_update_hardware(uint32_t crc, const unsigned char *data, size_t length)
{
    uint64_t crc64 = crc;
    while (length && ((uintptr_t)data & 7)) {
        crc64 = __builtin_ia32_crc32qi((uint32_t)crc64, *data++);
        length--;
    }
    while (length >= 3 * CRC_LONG) {
        crc64 = crc_three_blocks((uint32_t)crc64, data, CRC_LONG, crc_shift_long);
        data += 3 * CRC_LONG;
        length -= 3 * CRC_LONG;
    }
    while (length >= 3 * CRC_SHORT) {
        crc64 = crc_three_blocks((uint32_t)crc64, data, CRC_SHORT, crc_shift_short);
        data += 3 * CRC_SHORT;
        length -= 3 * CRC_SHORT;
    }
    /* A tail of 192 to 767 bytes (most of a 256 B record's frame): one more
     * join beats the single stream's latency. Blocks of 1024 were tried for
     * 4 KiB records: twice as slow from DRAM as these 256s, though faster in
     * cache; measure from DRAM before widening anything here. */
    if (length >= 3 * CRC_TINY) {
        crc64 = crc_three_blocks((uint32_t)crc64, data, CRC_TINY, crc_shift_tiny);
        data += 3 * CRC_TINY;
        length -= 3 * CRC_TINY;
    }
    while (length >= 8) {
        crc64 = __builtin_ia32_crc32di(crc64, load_u64(data));
        data += 8;
        length -= 8;
    }
    while (length--) {
        crc64 = __builtin_ia32_crc32qi((uint32_t)crc64, *data++);
    }
    return (uint32_t)crc64;
}
#endif

static int use_hardware = 0;

uint32_t
crc_update(uint32_t crc, const unsigned char *data, size_t length)
{
#ifdef HAVE_HARDWARE_CRC
    if (use_hardware) {
        return crc_update_hardware(crc, data, length);
    }
#endif
    return crc_update_table(crc, data, length);
}

int
crc_setup(void)
{
    crc_init_tables();
#ifdef HAVE_HARDWARE_CRC
    __builtin_cpu_init();
    use_hardware = __builtin_cpu_supports("sse4.2") != 0;
    if (use_hardware) {
        crc_shift_tables(crc_shift_long, CRC_LONG);
        crc_shift_tables(crc_shift_short, CRC_SHORT);
        crc_shift_tables(crc_shift_tiny, CRC_TINY);
    }
#endif
    return use_hardware;
}
