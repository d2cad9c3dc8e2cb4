/*
 * A matrix-multiply tile: C = A × B for two n×n matrices of doubles, row-major.
 *
 * Input (little-endian), 8 + 16 n² bytes:
 *   uint64_t n;
 *   double A[n * n];
 *   double B[n * n];
 * Output, 8 n² bytes:
 *   double C[n * n];
 *
 * Errors: RAFI_ERR_INVALID_INPUT when input_len is not 8 + 16 n²,
 *         RAFI_ERR_OUTPUT_TOO_SMALL when output_capacity < 8 n².
 */
#include <string.h>

#include "rafi_function.h"

static int64_t matmul(const uint8_t *input, size_t input_len, uint8_t *output,
                      size_t output_capacity) {
    uint64_t n;
    if (input_len < sizeof n) return RAFI_ERR_INVALID_INPUT;
    memcpy(&n, input, sizeof n);
    /* n² and 16 n² without overflow: n² <= (input_len - 8) / 16. */
    if (n > 0 && n > ((input_len - 8) / 16) / n) return RAFI_ERR_INVALID_INPUT;
    uint64_t nn = n * n;
    if (8 + 16 * nn != input_len) return RAFI_ERR_INVALID_INPUT;
    if (output_capacity / 8 < nn) return RAFI_ERR_OUTPUT_TOO_SMALL;
    const double *a = (const double *)(input + 8), *b = a + nn;
    double *c = (double *)output;
    for (uint64_t i = 0; i < nn; i++) c[i] = 0.0;
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t k = 0; k < n; k++) {
            double aik = a[i * n + k];
            for (uint64_t j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j];
        }
    return (int64_t)(8 * nn);
}

static const rafi_function_entry functions[] = {
    {"matmul", matmul},
};
RAFI_FUNCTION_EXPORT(functions)
