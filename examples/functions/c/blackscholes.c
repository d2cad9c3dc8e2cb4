/*
 * Black-Scholes prices of a batch of European call options.
 *
 * Input (little-endian, as on every rafi host), 8 + 40 n bytes:
 *   uint64_t n;                 number of options
 *   double S[n];                spot prices
 *   double K[n];                strikes
 *   double T[n];                times to expiry (years)
 *   double r[n];                risk-free rates (continuous)
 *   double sigma[n];            volatilities
 * Output, 8 n bytes:
 *   double call[n];             call prices
 *
 * Errors: RAFI_ERR_INVALID_INPUT when input_len is not 8 + 40 n,
 *         RAFI_ERR_OUTPUT_TOO_SMALL when output_capacity < 8 n.
 * The input is 16-byte aligned (RAFI_FUNCTION_ALIGN), so the doubles are aligned too.
 */
#include <math.h>
#include <string.h>

#include "rafi_function.h"

static const double SQRT_2 = 1.41421356237309504880;

static double normal_cdf(double x) { return 0.5 * erfc(-x / SQRT_2); }

static double call_price(double s, double k, double t, double r, double sigma) {
    double sqrt_t = sqrt(t);
    double d1 = (log(s / k) + (r + 0.5 * sigma * sigma) * t) / (sigma * sqrt_t);
    double d2 = d1 - sigma * sqrt_t;
    return s * normal_cdf(d1) - k * exp(-r * t) * normal_cdf(d2);
}

static int64_t blackscholes(const uint8_t *input, size_t input_len, uint8_t *output,
                            size_t output_capacity) {
    uint64_t n;
    if (input_len < sizeof n) return RAFI_ERR_INVALID_INPUT;
    memcpy(&n, input, sizeof n);
    /* 8 + 40 n without overflow. */
    if (n > (input_len - 8) / 40 || 8 + 40 * n != input_len) return RAFI_ERR_INVALID_INPUT;
    if (output_capacity / 8 < n) return RAFI_ERR_OUTPUT_TOO_SMALL;
    const double *s = (const double *)(input + 8);
    const double *k = s + n, *t = k + n, *r = t + n, *sigma = r + n;
    double *call = (double *)output;
    for (uint64_t i = 0; i < n; i++) call[i] = call_price(s[i], k[i], t[i], r[i], sigma[i]);
    return (int64_t)(8 * n);
}

static const rafi_function_entry functions[] = {
    {"blackscholes", blackscholes},
};
RAFI_FUNCTION_EXPORT(functions)
