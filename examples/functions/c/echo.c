/* echo and noop: the smallest rafi functions. */
#include <string.h>

#include "rafi_function.h"

/* Copies the input to the output. */
static int64_t echo(const uint8_t *input, size_t input_len, uint8_t *output,
                    size_t output_capacity) {
    if (input_len > output_capacity) return RAFI_ERR_OUTPUT_TOO_SMALL;
    memcpy(output, input, input_len);
    return (int64_t)input_len;
}

/* Does nothing, returns an empty output. */
static int64_t noop(const uint8_t *input, size_t input_len, uint8_t *output,
                    size_t output_capacity) {
    (void)input, (void)input_len, (void)output, (void)output_capacity;
    return 0;
}

static const rafi_function_entry functions[] = {
    {"echo", echo},
    {"noop", noop},
};
RAFI_FUNCTION_EXPORT(functions)
