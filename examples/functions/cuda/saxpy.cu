/*
 * A rafi function library with a CUDA kernel: saxpy, y = a*x + y, on the GPU the executor
 * was given (its lease's GPUs are the executor's CUDA_VISIBLE_DEVICES, so device 0 here is
 * the first leased GPU).
 *
 * Input (little-endian), 8 + 4 + 8 n bytes:
 *   uint64_t n;     number of elements
 *   float    a;
 *   float    x[n];
 *   float    y[n];
 * Output, 4 n bytes:
 *   float    y[n];  a*x + y
 *
 * Errors: RAFI_ERR_INVALID_INPUT for a malformed input, RAFI_ERR_OUTPUT_TOO_SMALL when the
 * output does not fit, -100 - cudaError_t for a CUDA failure (the client sees the code).
 *
 * Device buffers are allocated per call for clarity; a production library would keep one
 * per worker thread (thread_local) and use pinned host memory.
 *
 * Build: make (needs nvcc; see the Makefile).
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "rafi_function.h"

__global__ void saxpy_kernel(uint64_t n, float a, const float *x, float *y) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

static int64_t cuda_error(cudaError_t e) { return -100 - (int64_t)e; }

static int64_t saxpy(const uint8_t *input, size_t input_len, uint8_t *output,
                     size_t output_capacity) {
    uint64_t n;
    float a;
    if (input_len < 12) return RAFI_ERR_INVALID_INPUT;
    memcpy(&n, input, 8);
    memcpy(&a, input + 8, 4);
    /* 12 + 8 n without overflow. */
    if (n > (input_len - 12) / 8 || 12 + 8 * n != input_len) return RAFI_ERR_INVALID_INPUT;
    if (output_capacity < 4 * n) return RAFI_ERR_OUTPUT_TOO_SMALL;
    if (n == 0) return 0;
    size_t bytes = 4 * n;
    float *dx = NULL, *dy = NULL;
    cudaError_t e = cudaMalloc((void **)&dx, bytes);
    if (e == cudaSuccess) e = cudaMalloc((void **)&dy, bytes);
    if (e == cudaSuccess) e = cudaMemcpy(dx, input + 12, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(dy, input + 12 + bytes, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) {
        unsigned threads = 256;
        unsigned blocks = (unsigned)((n + threads - 1) / threads);
        saxpy_kernel<<<blocks, threads>>>(n, a, dx, dy);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpy(output, dy, bytes, cudaMemcpyDeviceToHost);
    cudaFree(dx);
    cudaFree(dy);
    return e == cudaSuccess ? (int64_t)bytes : cuda_error(e);
}

/* How many GPUs this executor sees (its lease's), as a uint32: a check that
 * CUDA_VISIBLE_DEVICES was applied. */
static int64_t gpu_count(const uint8_t *input, size_t input_len, uint8_t *output,
                         size_t output_capacity) {
    (void)input;
    (void)input_len;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) return cuda_error(e);
    if (output_capacity < 4) return RAFI_ERR_OUTPUT_TOO_SMALL;
    uint32_t c = (uint32_t)count;
    memcpy(output, &c, 4);
    return 4;
}

static const rafi_function_entry functions[] = {
    {"saxpy", saxpy},
    {"gpu_count", gpu_count},
};

extern "C" {
RAFI_FUNCTION_EXPORT(functions)
}
