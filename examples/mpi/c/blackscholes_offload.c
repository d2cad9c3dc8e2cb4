/*
 * blackscholes_offload: prices a batch of European call options on each MPI rank, split
 * between local threads and remote rafi workers, and checks every price against a local
 * computation. Reports the local-only time, the local+remote time, the speedup and the
 * cost of one invocation (a blocking round trip of a one-option batch).
 *
 *   mpirun -np 2 ./blackscholes_offload [OPTIONS_PER_RANK [LOCAL_THREADS [REMOTE_CORES [MODE]]]]
 *
 * MODE is the executors' polling mode: hot (the default: they spin on their leased cores)
 * or warm (they sleep when idle).
 *
 * The options are cut into batches of BATCH; local threads and the remote feeder take the
 * next batch from one shared counter, so the split follows whoever is faster. The feeder
 * keeps DEPTH requests in flight per remote worker (rafi_invoke_start, rafi_wait).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common.h"

#define BATCH 1024 /* options per invocation: 8 + 40 * 1024 B fits a 64 KiB slot */
#define DEPTH 4    /* requests in flight per remote worker */
#define MAX_IN_FLIGHT 256

typedef struct {
    size_t batches;
    uint8_t **inputs;     /* batch b's input, in the function's layout */
    double **prices;      /* batch b's prices, whoever computed them */
    atomic_size_t next;   /* the next batch to take */
    atomic_size_t remote; /* batches priced remotely */
} work;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *local_worker(void *arg) {
    work *w = arg;
    for (size_t b; (b = atomic_fetch_add(&w->next, 1)) < w->batches;) bs_local(w->inputs[b], w->prices[b]);
    return NULL;
}

/* Runs `threads` local threads over the batches and, with `alloc`, the remote feeder on
 * this thread; returns the seconds taken. */
static double run(work *w, int threads, rafi_alloc *alloc, int bs, int workers) {
    atomic_store(&w->next, 0);
    atomic_store(&w->remote, 0);
    pthread_t tids[64];
    double start = now();
    for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, local_worker, w);
    if (alloc != NULL) {
        int depth = workers * DEPTH < MAX_IN_FLIGHT ? workers * DEPTH : MAX_IN_FLIGHT;
        rafi_request *requests[MAX_IN_FLIGHT] = {0};
        size_t owner[MAX_IN_FLIGHT];
        int in_flight = 0, head = 0;
        for (;;) {
            /* Fill the window, then wait for the oldest request. */
            while (in_flight < depth) {
                size_t b = atomic_fetch_add(&w->next, 1);
                if (b >= w->batches) break;
                int slot = (head + in_flight) % depth;
                owner[slot] = b;
                CHECK(rafi_invoke_start(alloc, bs, w->inputs[b], bs_input_size(BATCH),
                                        w->prices[b], 8 * BATCH, &requests[slot]));
                in_flight++;
            }
            if (in_flight == 0) break;
            size_t len;
            CHECK(rafi_wait(&requests[head], &len));
            if (len != 8 * BATCH) {
                fprintf(stderr, "batch %zu: %zu bytes of prices\n", owner[head], len);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            atomic_fetch_add(&w->remote, 1);
            head = (head + 1) % depth;
            in_flight--;
        }
    }
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    return now() - start;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, ranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    size_t options = argc > 1 ? strtoul(argv[1], NULL, 10) : 1u << 20;
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    int cores = argc > 3 ? atoi(argv[3]) : 1;
    const char *mode = argc > 4 ? argv[4] : "hot";
    if (threads < 0 || threads > 64 || cores < 1 || options < BATCH) {
        if (rank == 0) fprintf(stderr, "usage: %s [OPTIONS>=%d [THREADS 0-64 [CORES>=1]]]\n", argv[0], BATCH);
        MPI_Finalize();
        return 2;
    }

    work w = {.batches = options / BATCH};
    w.inputs = malloc(w.batches * sizeof *w.inputs);
    w.prices = malloc(w.batches * sizeof *w.prices);
    double **expected = malloc(w.batches * sizeof *expected);
    for (size_t b = 0; b < w.batches; b++) {
        w.inputs[b] = aligned_alloc(16, bs_input_size(BATCH) + 8);
        w.prices[b] = malloc(8 * BATCH);
        expected[b] = malloc(8 * BATCH);
        bs_fill(w.inputs[b], BATCH, (uint64_t)rank * w.batches + b);
    }

    /* Local only: the reference prices, and the time to beat. */
    double local_s = run(&w, threads > 0 ? threads : 1, NULL, 0, 0);
    for (size_t b = 0; b < w.batches; b++) memcpy(expected[b], w.prices[b], 8 * BATCH);

    rafi_client *client = NULL;
    rafi_lease *lease = NULL;
    rafi_alloc *alloc = NULL;
    CHECK(rafi_connect_env(&client));
    CHECK(rafi_lease_create(client, cores, 600.0, &lease));
    rafi_alloc_config config = {.functions = "blackscholes", .mode = mode};
    CHECK(rafi_alloc_create_ex(lease, &config, &alloc));
    int bs, workers;
    CHECK(rafi_function(alloc, "blackscholes", &bs));
    CHECK(rafi_alloc_info(alloc, NULL, &workers));

    /* Invocation overhead: blocking round trips of one option. */
    uint8_t one[8 + 40];
    double price;
    size_t len;
    bs_fill(one, 1, 0);
    CHECK(rafi_invoke(alloc, bs, one, sizeof one, &price, sizeof price, &len)); /* warm-up */
    const int rounds = 1000;
    double t0 = now();
    for (int i = 0; i < rounds; i++) CHECK(rafi_invoke(alloc, bs, one, sizeof one, &price, sizeof price, &len));
    double overhead_us = (now() - t0) / rounds * 1e6;

    /* Local + remote. */
    for (size_t b = 0; b < w.batches; b++) memset(w.prices[b], 0, 8 * BATCH);
    double both_s = run(&w, threads, alloc, bs, workers);
    double worst = 0;
    for (size_t b = 0; b < w.batches; b++) worst = fmax(worst, max_diff(w.prices[b], expected[b], BATCH));
    size_t remote = atomic_load(&w.remote);

    printf("rank %d: %zu options; local (%d thread(s)) %.3f s; local + %d remote worker(s) %.3f s; "
           "speedup %.2f; %zu of %zu batches remote; invocation round trip %.1f us; "
           "largest difference %.3g\n",
           rank, w.batches * BATCH, threads > 0 ? threads : 1, local_s, workers, both_s,
           local_s / both_s, remote, w.batches, overhead_us, worst);
    int failures = worst > 1e-9 || (threads == 0 && remote != w.batches);

    CHECK(rafi_alloc_free(&alloc));
    CHECK(rafi_lease_release(&lease));
    CHECK(rafi_disconnect(&client));
    for (size_t b = 0; b < w.batches; b++) free(w.inputs[b]), free(w.prices[b]), free(expected[b]);
    free(w.inputs), free(w.prices), free(expected);

    int total = 0;
    MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) printf("blackscholes_offload: %s\n", total == 0 ? "results match" : "WRONG RESULTS");
    MPI_Bcast(&total, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
