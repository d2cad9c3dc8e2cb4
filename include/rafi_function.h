/*
 * rafi_function.h — the C ABI of a rafi function library (ABI version 1).
 *
 * A function library is a shared object (C, C++, Fortran, Rust, ...) that an executor
 * loads from a path on its node, or from bytes a client ships at allocation (through a
 * memfd). It exports exactly two symbols:
 *
 *   uint32_t rafi_function_abi_version(void);
 *       Returns RAFI_FUNCTION_ABI_VERSION. A library built against another version is
 *       refused at load time.
 *
 *   const rafi_function_entry *rafi_function_table(size_t *count);
 *       Stores the number of entries in *count and returns the table: an array of
 *       *count entries, static for the life of the library (the executor reads it once,
 *       at load time). Each entry has a name and a function pointer (never NULL). Names are
 *       NUL-terminated UTF-8, 1 to RAFI_FUNCTION_NAME_MAX bytes, without control
 *       characters, unique within the library (and within an executor's function table).
 *       Clients name the functions they will call at allocation; the executor resolves the
 *       names to indices then, so nothing is looked up per call.
 *
 * A function:
 *
 *   int64_t f(const uint8_t *input, size_t input_len,
 *             uint8_t *output, size_t output_capacity);
 *
 *   input             the request payload, input_len bytes (input_len may be 0; input is
 *                     then still a valid pointer). Read-only.
 *   output            where to write the response payload: output_capacity bytes of
 *                     writable, initialized memory with unspecified contents.
 *   returns           >= 0: the output length, which must be <= output_capacity (a larger
 *                     value is reported to the client as an error, output discarded);
 *                     <  0: an error code: one of RAFI_ERR_* below, or any other negative
 *                     value for a function-specific failure, which the client receives
 *                     as the error code of its call (truncated to 32 bits: keep such
 *                     codes in [INT32_MIN, RAFI_ERR_RESERVED_MIN - 1]).
 *
 * Guarantees the executor gives:
 *   - Alignment: input and output both start at a multiple of RAFI_FUNCTION_ALIGN (16)
 *     bytes. (rafi's executor in fact gives 64: the payload sits at offset 64 of a slot
 *     whose size is a power of two, in a page-aligned region.) Data inside the payload is
 *     aligned only as well as the client laid it out.
 *   - input and output do not overlap.
 *   - Sizes: input_len and output_capacity are at most the slot size minus 64 bytes.
 *
 * What a function must do:
 *   - Thread safety: the same function, and different functions of one library, are
 *     called concurrently from several worker threads. Use no unsynchronized global state.
 *   - Do not keep input or output after returning: the slots are reused for the next call
 *     as soon as the function returns.
 *   - Validate the input: it comes from the network. Check input_len against the layout
 *     you expect and return RAFI_ERR_INVALID_INPUT when it is wrong; check your output
 *     size against output_capacity and return RAFI_ERR_OUTPUT_TOO_SMALL instead of
 *     writing past it. The executor checks lengths and slot bounds, but cannot know your
 *     layout.
 *   - Return promptly, and do not block on other calls: a worker thread runs one call at a
 *     time on a core the client leased. Avoid allocation and system calls on the hot path
 *     if you care about microseconds.
 *   - Do not crash: a segfault or abort() in native code kills the executor process (and
 *     with it every call of that allocation). C++ exceptions must not escape (the function
 *     is extern "C"); a Rust wrapper made with rafi_function::export! catches panics and
 *     returns RAFI_ERR_PANIC.
 *
 * Build:  cc -O2 -shared -fPIC -o libmine.so mine.c   (see examples/functions/c/Makefile)
 * More:   docs/functions.md
 */
#ifndef RAFI_FUNCTION_H
#define RAFI_FUNCTION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version this header describes. */
#define RAFI_FUNCTION_ABI_VERSION 1u

/* Input and output are aligned to at least this many bytes. */
#define RAFI_FUNCTION_ALIGN 16

/* Longest function name, in bytes, without the terminating NUL. */
#define RAFI_FUNCTION_NAME_MAX 255

/* Error codes. -1 .. -15 are reserved for rafi; use other negative values for your own. */
/* The input does not have the layout the function expects. */
#define RAFI_ERR_INVALID_INPUT (-1)
/* The output would not fit in output_capacity bytes. */
#define RAFI_ERR_OUTPUT_TOO_SMALL (-2)
/* The function panicked (set by Rust wrappers, which catch the panic). */
#define RAFI_ERR_PANIC (-3)
/* A wrapper failed for another reason (e.g. a Rust output too complex to archive). */
#define RAFI_ERR_INTERNAL (-4)
/* The lowest reserved code: function-specific codes should be below it. */
#define RAFI_ERR_RESERVED_MIN (-15)

/* A function's entry point. */
typedef int64_t (*rafi_function_fn)(const uint8_t *input, size_t input_len,
                                    uint8_t *output, size_t output_capacity);

/* One entry of the function table. */
typedef struct rafi_function_entry {
    const char *name;      /* NUL-terminated UTF-8, unique, 1..RAFI_FUNCTION_NAME_MAX bytes */
    rafi_function_fn call; /* never NULL */
} rafi_function_entry;

/* The two symbols a library exports. */
uint32_t rafi_function_abi_version(void);
const rafi_function_entry *rafi_function_table(size_t *count);

/*
 * Convenience for C libraries: defines both symbols from a static table.
 *
 *   static const rafi_function_entry functions[] = {
 *       { "echo", echo },
 *       { "noop", noop },
 *   };
 *   RAFI_FUNCTION_EXPORT(functions)
 */
#define RAFI_FUNCTION_EXPORT(table)                                               \
    uint32_t rafi_function_abi_version(void) { return RAFI_FUNCTION_ABI_VERSION; } \
    const rafi_function_entry *rafi_function_table(size_t *count) {               \
        if (count) *count = sizeof(table) / sizeof((table)[0]);                   \
        return (table);                                                           \
    }

#ifdef __cplusplus
}
#endif

#endif /* RAFI_FUNCTION_H */
