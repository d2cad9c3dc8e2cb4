/* Helpers the C examples share: a check that reports rafi's message, and a local
 * Black-Scholes reference with the input layout of examples/functions/c/blackscholes.c. */
#ifndef RAFI_EXAMPLE_COMMON_H
#define RAFI_EXAMPLE_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>
#include <rafi.h>

/* Ends the job with the code, its description and rafi's message when a call fails. */
#define CHECK(call)                                                                       \
    do {                                                                                  \
        int rc_ = (call);                                                                 \
        if (rc_ != RAFI_OK) {                                                             \
            fprintf(stderr, "%s:%d: %s failed: %d (%s): %s\n", __FILE__, __LINE__, #call, \
                    rc_, rafi_strerror(rc_), rafi_last_error());                          \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                 \
        }                                                                                 \
    } while (0)

/* The bytes of a Black-Scholes batch of n options: 8 + 40 n. */
static inline size_t bs_input_size(size_t n) { return 8 + 40 * n; }

/* Fills `input` with n options derived from `seed` (deterministic). */
static inline void bs_fill(uint8_t *input, uint64_t n, uint64_t seed) {
    double *d = (double *)(input + 8);
    memcpy(input, &n, 8);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = seed * 7919 + i;
        d[i] = 80.0 + (double)(k % 41);                  /* spot */
        d[n + i] = 90.0 + (double)(k % 23);              /* strike */
        d[2 * n + i] = 0.25 + (double)(k % 8) * 0.25;    /* years */
        d[3 * n + i] = 0.01 + (double)(k % 5) * 0.01;    /* rate */
        d[4 * n + i] = 0.1 + (double)(k % 9) * 0.05;     /* volatility */
    }
}

static inline double bs_call(double s, double k, double t, double r, double sigma) {
    double sqrt_t = sqrt(t);
    double d1 = (log(s / k) + (r + 0.5 * sigma * sigma) * t) / (sigma * sqrt_t);
    double d2 = d1 - sigma * sqrt_t;
    return s * 0.5 * erfc(-d1 / sqrt(2.0)) - k * exp(-r * t) * 0.5 * erfc(-d2 / sqrt(2.0));
}

/* Prices the batch at `input` locally into `out`. */
static inline void bs_local(const uint8_t *input, double *out) {
    uint64_t n;
    memcpy(&n, input, 8);
    const double *d = (const double *)(input + 8);
    for (uint64_t i = 0; i < n; i++)
        out[i] = bs_call(d[i], d[n + i], d[2 * n + i], d[3 * n + i], d[4 * n + i]);
}

/* The largest difference between two price vectors. */
static inline double max_diff(const double *a, const double *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

#endif
