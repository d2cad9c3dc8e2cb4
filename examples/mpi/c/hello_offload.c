/*
 * hello_offload: each MPI rank leases a core, starts an executor there with the example
 * function libraries (echo, blackscholes), and invokes them: blocking, non-blocking with
 * test/waitall, and a fan-out of many inputs; then frees and releases everything.
 *
 *   RAFI_RESOURCE_MANAGER=host:port RAFI_CLIENT=name RAFI_CLIENT_SECRET=secret \
 *       mpirun -np 2 ./hello_offload [CORES_PER_RANK]
 *
 * A lease of more cores than one node has spans nodes: the allocation then has an
 * executor on each, and the fan-out and the requests use all of them.
 */
#include <unistd.h>

#include "common.h"

#define BATCHES 8   /* non-blocking Black-Scholes requests in flight */
#define OPTIONS 100 /* options per batch */
#define MANY 64     /* inputs of the fan-out */

/* Leases one core for a short time (RAFI_EXAMPLE_SHORT_LEASE seconds, default 2),
 * allocates, renews both for a minute if asked, waits until a second after the first
 * expiry and invokes: the answer must come only from the renewed lease. Returns the
 * failures. */
static int short_lease(rafi_client *client, int renew, int rank) {
    const char *setting = getenv("RAFI_EXAMPLE_SHORT_LEASE");
    double seconds = setting ? atof(setting) : 2.0;
    if (seconds <= 0) seconds = 2.0;
    rafi_lease *lease = NULL;
    rafi_alloc *alloc = NULL;
    CHECK(rafi_lease_create(client, 1, seconds, &lease));
    CHECK(rafi_alloc_create(lease, "echo", &alloc));
    int fn;
    CHECK(rafi_function(alloc, "echo", &fn));
    if (renew) {
        CHECK(rafi_lease_renew(lease, 60.0));
        CHECK(rafi_alloc_renew(alloc, lease));
    }
    sleep((unsigned)seconds + 1);
    char reply[16];
    size_t len = 0;
    int rc = rafi_invoke(alloc, fn, "late", 4, reply, sizeof reply, &len);
    int ok = renew ? rc == RAFI_OK && len == 4 : rc == RAFI_ERR_EXECUTOR_GONE;
    printf("rank %d: a short lease, %s, after its first expiry: %s (%s)\n", rank,
           renew ? "renewed" : "not renewed", ok ? "as expected" : "WRONG",
           rc == RAFI_OK ? "answered" : rafi_last_error());
    rafi_alloc_free(&alloc);
    /* An expired lease is gone: releasing it says so. */
    rc = rafi_lease_release(&lease);
    if (renew ? rc != RAFI_OK : rc != RAFI_ERR_LEASE) {
        printf("rank %d: releasing the %s lease gave %d (%s)\n", rank,
               renew ? "renewed" : "expired", rc, rafi_last_error());
        ok = 0;
    }
    rafi_lease_free(&lease);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);

    rafi_client *client = NULL;
    rafi_lease *lease = NULL;
    rafi_alloc *alloc = NULL;
    CHECK(rafi_connect_env(&client));
    int wanted = argc > 1 ? atoi(argv[1]) : 1;
    CHECK(rafi_lease_create(client, wanted, 300.0, &lease));
    uint64_t lease_id;
    int cores, nodes;
    CHECK(rafi_lease_info(lease, &lease_id, &cores, &nodes));
    CHECK(rafi_alloc_create(lease, "echo,blackscholes", &alloc));
    int echo, blackscholes, workers;
    size_t max_input;
    CHECK(rafi_function(alloc, "echo", &echo));
    CHECK(rafi_function(alloc, "blackscholes", &blackscholes));
    CHECK(rafi_alloc_info(alloc, &max_input, &workers));
    printf("rank %d: lease %llu, %d core(s) on %d node(s), %d worker(s), inputs up to %zu B\n",
           rank, (unsigned long long)lease_id, cores, nodes, workers, max_input);

    /* Blocking. */
    char greeting[64], reply[64];
    int len = snprintf(greeting, sizeof greeting, "hello from rank %d", rank);
    size_t reply_len = 0;
    CHECK(rafi_invoke(alloc, echo, greeting, (size_t)len, reply, sizeof reply, &reply_len));
    int failures = reply_len != (size_t)len || memcmp(greeting, reply, reply_len) != 0;
    printf("rank %d: echo answered \"%.*s\"\n", rank, (int)reply_len, reply);

    /* From registered memory: the input is built in place and sent from there (no copy
     * into rafi's slots), many times over one registration. */
    rafi_buffer *buffer = NULL;
    CHECK(rafi_buffer_create(alloc, 4096, &buffer));
    char *data = rafi_buffer_data(buffer);
    if (data == NULL || rafi_buffer_size(buffer) != 4096) failures++;
    for (int i = 0; i < 3; i++) {
        int n = snprintf(data + 100 * i, 100, "rank %d, buffer input %d", rank, i);
        CHECK(rafi_invoke_buffer(alloc, echo, buffer, (size_t)(100 * i), (size_t)n, reply,
                                 sizeof reply, &reply_len));
        if (reply_len != (size_t)n || memcmp(reply, data + 100 * i, (size_t)n) != 0) failures++;
    }
    CHECK(rafi_buffer_free(&buffer));
    if (buffer != NULL) failures++;
    printf("rank %d: 3 invocations from a registered buffer\n", rank);

    /* Non-blocking: start every batch, compute the reference meanwhile, then wait. */
    static uint8_t inputs[BATCHES][8 + 40 * OPTIONS];
    static double prices[BATCHES][OPTIONS], expected[BATCHES][OPTIONS];
    rafi_request *requests[BATCHES];
    for (int b = 0; b < BATCHES; b++) {
        bs_fill(inputs[b], OPTIONS, (uint64_t)(rank * BATCHES + b));
        CHECK(rafi_invoke_start(alloc, blackscholes, inputs[b], bs_input_size(OPTIONS),
                                prices[b], sizeof prices[b], &requests[b]));
    }
    for (int b = 0; b < BATCHES; b++) bs_local(inputs[b], expected[b]);
    /* The first one with rafi_test, as a loop that could do other work. */
    int done = 0;
    size_t lens[BATCHES];
    while (!done) CHECK(rafi_test(&requests[0], &done, &lens[0]));
    if (requests[0] != NULL) failures++;
    int statuses[BATCHES];
    CHECK(rafi_waitall(BATCHES - 1, &requests[1], &lens[1], &statuses[1]));
    double worst = 0;
    for (int b = 0; b < BATCHES; b++) {
        if (lens[b] != sizeof prices[b]) failures++;
        worst = fmax(worst, max_diff(prices[b], expected[b], OPTIONS));
    }
    if (worst > 1e-9) failures++;
    printf("rank %d: %d non-blocking Black-Scholes batches, largest difference %.3g\n", rank,
           BATCHES, worst);

    /* Fan-out: MANY inputs of 16 bytes over every worker. */
    static char many_in[MANY][16], many_out[MANY][16];
    size_t many_lens[MANY];
    int many_status[MANY];
    for (int i = 0; i < MANY; i++) snprintf(many_in[i], 16, "r%d-input-%03d", rank, i);
    CHECK(rafi_invoke_many(alloc, echo, MANY, many_in, 16, many_out, 16, many_lens,
                           many_status));
    for (int i = 0; i < MANY; i++)
        if (many_status[i] != RAFI_OK || many_lens[i] != 16 || memcmp(many_in[i], many_out[i], 16))
            failures++;
    printf("rank %d: fan-out of %d echoes done\n", rank, MANY);

    CHECK(rafi_alloc_free(&alloc));
    CHECK(rafi_lease_release(&lease));
    if (alloc != NULL || lease != NULL) failures++;

    /* Renewal. A short lease left alone ends with its executor; one renewed at the
     * resource manager (rafi_lease_renew) and at its executors' managers
     * (rafi_alloc_renew) lives on. */
    failures += short_lease(client, 0, rank);
    failures += short_lease(client, 1, rank);

    CHECK(rafi_disconnect(&client));
    if (client != NULL) failures++;

    int total = 0;
    MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        if (total == 0)
            printf("hello_offload: all checks passed\n");
        else
            printf("hello_offload: %d check(s) failed\n", total);
    }
    MPI_Bcast(&total, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
