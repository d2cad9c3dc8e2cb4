/*
 * rafi.h — the C API of rafi: lease cores of an HPC cluster and invoke functions on them
 * with one-sided RDMA. Link with librafi: `mpicc app.c $(pkg-config --cflags --libs rafi)`.
 * The guide is docs/mpi.md.
 *
 *   rafi_connect / rafi_connect_env          a client of the resource manager
 *   rafi_lease_create                        cores on one or more nodes, for a while
 *   rafi_lease_renew + rafi_alloc_renew      for a while longer
 *   rafi_alloc_create                        an executor on each node with your functions
 *   rafi_invoke                              blocking
 *   rafi_buffer_create + rafi_invoke_buffer  blocking, from registered memory (no copy)
 *   rafi_invoke_start + rafi_test/wait/waitall  non-blocking, like MPI requests
 *   rafi_invoke_many                         many inputs over every worker of every node
 *   rafi_alloc_free, rafi_lease_release, rafi_disconnect
 *
 * Errors. Every call returns RAFI_OK (0) or an RAFI_ERR_* code; rafi_strerror(code) is
 * its fixed description and rafi_last_error() the message of the calling thread's last
 * failed call (which says what and where: "the executor manager of node n3 refused
 * (forged): ..."). No call aborts the process: a NULL or malformed argument is
 * RAFI_ERR_ARG, an internal fault RAFI_ERR_BUG.
 *
 * Threads. All calls may be made from any thread. Calls on different handles run in
 * parallel; calls on one rafi_alloc are serialized per node (use one allocation per
 * thread for parallel blocking invocations, or the non-blocking calls). A rafi_request is
 * completed by one thread. rafi_last_error() is per thread.
 *
 * Buffers. Inputs and outputs are the caller's memory: the input is written once into a
 * registered slot and sent with one RDMA write; the output is copied once from its
 * registered slot into the caller's buffer. To skip the input's copy, register input
 * memory once with rafi_buffer_create, build each input in it (rafi_buffer_data) and
 * invoke with rafi_invoke_buffer: the RDMA write reads the input where it lies. For non-blocking invocations the caller must
 * leave both buffers alone until the request completes (as for MPI_Isend/MPI_Irecv), and
 * requests in flight must not share an output buffer.
 *
 * Environment: RAFI_TCP_LISTEN (ip:port) is where the client listens on the tcp fabric
 * (default: loopback, executors on this host only).
 *
 * Handles are freed by the call that ends them (rafi_*_free, rafi_*_release,
 * rafi_disconnect, and the completion of a request), which also sets the caller's handle
 * to NULL; freeing a NULL handle is a no-op.
 */
#ifndef RAFI_H
#define RAFI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. (The RAFI_ERR_* codes a *function library* returns are another set, in
 * rafi_function.h; the two headers do not clash.) */
enum {
    RAFI_OK = 0,
    RAFI_ERR_ARG = 1,            /* a NULL, malformed or out-of-range argument */
    RAFI_ERR_CONNECT = 2,        /* resource manager, executor manager or executor unreachable */
    RAFI_ERR_AUTH = 3,           /* the resource manager refused the client's credential */
    RAFI_ERR_LEASE = 4,          /* lease token refused (forged, expired, reused) or lease ended */
    RAFI_ERR_EXHAUSTED = 5,      /* not enough free cores */
    RAFI_ERR_ALLOC = 6,          /* the executor refused the allocation (e.g. unknown function) */
    RAFI_ERR_TOO_LARGE = 7,      /* input larger than a slot: refused before anything is sent */
    RAFI_ERR_TRUNCATED = 8,      /* output larger than the caller's buffer (length returned) */
    RAFI_ERR_EXECUTOR_GONE = 9,  /* the executor died or its lease ended */
    RAFI_ERR_TIMEOUT = 10,       /* no response within the allocation's timeout */
    RAFI_ERR_FUNCTION = 11,      /* the function returned another error or panicked */
    RAFI_ERR_REJECTED = 12,      /* the input was refused as invalid (by the executor's
                                    validation or the function's RAFI_ERR_INVALID_INPUT) */
    RAFI_ERR_BUSY = 13,          /* every slot of every worker is in flight */
    RAFI_ERR_CANCELLED = 14,     /* the request's allocation was freed before it ran */
    RAFI_ERR_FABRIC = 15,        /* the fabric cannot be opened (e.g. no verbs support) */
    RAFI_ERR_PROTOCOL = 16,      /* a malformed answer */
    RAFI_ERR_BUG = 17            /* an internal error of librafi */
};

typedef struct rafi_client rafi_client;   /* a client of the resource manager */
typedef struct rafi_lease rafi_lease;     /* a granted lease */
typedef struct rafi_alloc rafi_alloc;     /* executors on the lease's nodes */
typedef struct rafi_request rafi_request; /* a non-blocking invocation */
typedef struct rafi_buffer rafi_buffer;   /* registered input memory of an allocation */

/* Settings of an allocation; a zeroed struct means the defaults. */
typedef struct rafi_alloc_config {
    const char *functions; /* comma-separated function names, e.g. "echo,noop" (required) */
    const char *library;   /* a function library to ship to the executors, or NULL */
    const char *mode;      /* "hot", "warm", or NULL for the executor's default */
    uint32_t slots;        /* invocations in flight per worker (0: 8) */
    uint32_t slot_size;    /* bytes per slot, header included (0: 64 KiB) */
    double timeout_s;      /* how long an invocation may take (0: 10 s) */
    double spin_us;        /* spin this long before sleeping while waiting (0: 100 us;
                              negative: spin for the whole timeout, the lowest latency) */
} rafi_alloc_config;

const char *rafi_strerror(int code);
const char *rafi_last_error(void);

/* Clients. rafi_connect_env reads RAFI_RESOURCE_MANAGER (host:port), RAFI_CLIENT and
 * RAFI_CLIENT_SECRET. Both check the credential with the resource manager at once. */
int rafi_connect(const char *resource_manager, const char *client, const char *secret,
                 rafi_client **client_out);
int rafi_connect_env(rafi_client **client_out);
int rafi_disconnect(rafi_client **client);

/* Leases. A lease may span nodes. rafi_lease_export writes it as JSON text (for
 * MPI_Bcast to other ranks, which rafi_lease_import it); each node's token admits one
 * allocation. */
int rafi_lease_create(const rafi_client *client, int cores, double duration_s,
                      rafi_lease **lease_out);
int rafi_lease_info(const rafi_lease *lease, uint64_t *id, int *cores, int *nodes);
int rafi_lease_export(const rafi_lease *lease, char *buffer, size_t capacity, size_t *len);
int rafi_lease_import(const rafi_client *client, const char *json, rafi_lease **lease_out);
/* Renewal: rafi_lease_renew extends the lease to duration_s seconds from now (the handle
 * takes the fresh tokens); rafi_alloc_renew hands them to the executor managers of an
 * allocation made on that lease, whose executors otherwise end at the old expiry. An
 * ended lease is RAFI_ERR_LEASE. */
int rafi_lease_renew(rafi_lease *lease, double duration_s);
int rafi_alloc_renew(const rafi_alloc *alloc, const rafi_lease *lease);
int rafi_lease_release(rafi_lease **lease); /* ends the lease and frees the handle */
int rafi_lease_free(rafi_lease **lease);    /* frees the handle only; the lease goes on */

/* Allocations: one executor on each node of the lease, one worker per leased core. */
int rafi_alloc_create(const rafi_lease *lease, const char *functions, rafi_alloc **alloc_out);
int rafi_alloc_create_ex(const rafi_lease *lease, const rafi_alloc_config *config,
                         rafi_alloc **alloc_out);
int rafi_alloc_info(const rafi_alloc *alloc, size_t *max_input, int *workers);
int rafi_function(const rafi_alloc *alloc, const char *name, int *function);
int rafi_alloc_free(rafi_alloc **alloc);

/* Blocking: *output_len receives the output's length (on RAFI_ERR_TRUNCATED, the length
 * that was needed). */
int rafi_invoke(const rafi_alloc *alloc, int function, const void *input, size_t input_len,
                void *output, size_t capacity, size_t *output_len);

/* Registered input memory (like MPI_Alloc_mem): rafi_buffer_create registers size bytes
 * with one node of the allocation (round robin over its nodes; invocations from the
 * buffer run there) and keeps the allocation's executors alive until rafi_buffer_free.
 * Write inputs at rafi_buffer_data(buffer); rafi_invoke_buffer sends the len bytes at
 * offset in place and waits, as rafi_invoke does. A range outside the buffer or a buffer
 * of another allocation is RAFI_ERR_ARG, a range larger than a slot RAFI_ERR_TOO_LARGE
 * (nothing is sent). */
int rafi_buffer_create(const rafi_alloc *alloc, size_t size, rafi_buffer **buffer_out);
void *rafi_buffer_data(const rafi_buffer *buffer);
size_t rafi_buffer_size(const rafi_buffer *buffer);
int rafi_invoke_buffer(const rafi_alloc *alloc, int function, const rafi_buffer *buffer,
                       size_t offset, size_t len, void *output, size_t capacity,
                       size_t *output_len);
int rafi_buffer_free(rafi_buffer **buffer);

/* Non-blocking. rafi_test sets *done and, once done, returns the request's status, frees
 * it and sets *request to NULL; rafi_wait blocks until then. A NULL request is complete
 * (RAFI_OK). rafi_waitall returns RAFI_OK or the status of the first failed request;
 * output_lens and statuses may be NULL. */
int rafi_invoke_start(const rafi_alloc *alloc, int function, const void *input,
                      size_t input_len, void *output, size_t capacity,
                      rafi_request **request);
int rafi_test(rafi_request **request, int *done, size_t *output_len);
int rafi_wait(rafi_request **request, size_t *output_len);
int rafi_waitall(size_t count, rafi_request **requests, size_t *output_lens, int *statuses);

/* Fan-out: input i is the input_size bytes at inputs + i * input_size, its output goes to
 * outputs + i * output_size. Returns RAFI_OK or the status of the first failed input;
 * output_lens and statuses (each count long) may be NULL. */
int rafi_invoke_many(const rafi_alloc *alloc, int function, size_t count, const void *inputs,
                     size_t input_size, void *outputs, size_t output_size,
                     size_t *output_lens, int *statuses);

#ifdef __cplusplus
}
#endif

#endif /* RAFI_H */
