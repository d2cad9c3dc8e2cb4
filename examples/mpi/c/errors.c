/*
 * errors: every way a call can fail that an MPI code should handle, each checked for its
 * code and message, none ending the process: a wrong credential, a forged lease token, a
 * malformed lease, NULL arguments, an input larger than a slot (refused before sending),
 * an output larger than the caller's buffer, a function that fails, and, when
 * RAFI_TEST_SYNC_DIR is set, an executor killed by the test harness: each rank writes
 * DIR/ready.<rank>, waits for DIR/killed, and expects RAFI_ERR_EXECUTOR_GONE.
 */
#include <unistd.h>

#include "common.h"

static int failures = 0;
static int rank = 0;

/* Checks that `got` is `want` and that the message contains `needle`. */
static void expect(const char *what, int got, int want, const char *needle) {
    const char *message = rafi_last_error();
    int ok = got == want && (needle == NULL || strstr(message, needle) != NULL);
    printf("rank %d: %-34s %s: %d (%s): %s\n", rank, what, ok ? "ok" : "WRONG", got,
           rafi_strerror(got), message);
    if (!ok) {
        printf("rank %d:   expected %d (%s) with \"%s\"\n", rank, want, rafi_strerror(want),
               needle ? needle : "");
        failures++;
    }
}

static void dead_executor(rafi_alloc *alloc, int echo, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/ready.%d", dir, rank);
    FILE *f = fopen(path, "w");
    if (f == NULL || fclose(f) != 0) {
        printf("rank %d: cannot write %s\n", rank, path);
        failures++;
        return;
    }
    snprintf(path, sizeof path, "%s/killed", dir);
    for (int waited = 0; access(path, F_OK) != 0; waited++) {
        if (waited > 600) { /* 60 s: the harness never killed it */
            printf("rank %d: no %s after 60 s\n", rank, path);
            failures++;
            return;
        }
        usleep(100000);
    }
    char out[16];
    size_t len;
    expect("invoke on a killed executor", rafi_invoke(alloc, echo, "x", 1, out, 16, &len),
           RAFI_ERR_EXECUTOR_GONE, "executor is gone");
    rafi_request *request = NULL;
    int rc = rafi_invoke_start(alloc, echo, "y", 1, out, 16, &request);
    if (rc == RAFI_OK) rc = rafi_wait(&request, &len);
    expect("non-blocking on a killed executor", rc, RAFI_ERR_EXECUTOR_GONE, "executor is gone");
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *rm = getenv("RAFI_RESOURCE_MANAGER");
    const char *name = getenv("RAFI_CLIENT");
    if (rm == NULL || name == NULL) {
        fprintf(stderr, "set RAFI_RESOURCE_MANAGER, RAFI_CLIENT and RAFI_CLIENT_SECRET\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }

    rafi_client *client = NULL;
    expect("a wrong secret", rafi_connect(rm, name, "not-the-secret", &client), RAFI_ERR_AUTH,
           "401");
    expect("an unreachable resource manager",
           rafi_connect("127.0.0.1:1", name, "x", &client), RAFI_ERR_CONNECT, "cannot reach");
    expect("a NULL argument", rafi_connect(NULL, name, "x", &client), RAFI_ERR_ARG, "NULL");
    CHECK(rafi_connect_env(&client));

    rafi_lease *lease = NULL, *forged = NULL;
    expect("a lease of no cores", rafi_lease_create(client, 0, 60, &lease), RAFI_ERR_ARG, "cores");
    expect("more cores than the cluster has", rafi_lease_create(client, 100000, 60, &lease),
           RAFI_ERR_EXHAUSTED, NULL);
    CHECK(rafi_lease_create(client, 1, 300.0, &lease));

    /* A forged token: the lease's own, with its signature changed. */
    char json[8192];
    size_t json_len;
    CHECK(rafi_lease_export(lease, json, sizeof json, &json_len));
    char *token = strstr(json, "\"token\":\"");
    char *end = token ? strchr(token + 9, '"') : NULL;
    if (end == NULL || end - token < 12) {
        printf("rank %d: no token in the exported lease: %s\n", rank, json);
        failures++;
    } else {
        end[-2] = end[-2] == 'A' ? 'B' : 'A';
        CHECK(rafi_lease_import(client, json, &forged));
        rafi_alloc *bad = NULL;
        expect("a forged lease token", rafi_alloc_create(forged, "echo", &bad), RAFI_ERR_LEASE,
               "forged");
        if (bad != NULL) failures++;
        /* The forged copy's handle is freed; the lease itself lives on. */
        CHECK(rafi_lease_free(&forged));
    }
    expect("a malformed lease", rafi_lease_import(client, "{\"lease\": 1}", &forged),
           RAFI_ERR_ARG, "rafi_lease_export");
    /* A NULL out-pointer is refused before anything is started (no executor leaks). */
    expect("a NULL handle out-pointer", rafi_alloc_create(lease, "echo", NULL), RAFI_ERR_ARG,
           "NULL");

    rafi_alloc *alloc = NULL;
    CHECK(rafi_alloc_create(lease, "echo,blackscholes", &alloc));
    int echo, blackscholes;
    CHECK(rafi_function(alloc, "echo", &echo));
    CHECK(rafi_function(alloc, "blackscholes", &blackscholes));
    int missing;
    expect("a function not allocated", rafi_function(alloc, "matmul", &missing), RAFI_ERR_ARG,
           "matmul");
    char out[256];
    size_t len = 0;
    expect("a function index out of range", rafi_invoke(alloc, 7, "x", 1, out, 256, &len),
           RAFI_ERR_ARG, "index 7");

    /* Too large an input: refused before anything is sent, blocking or not. */
    size_t max_input;
    CHECK(rafi_alloc_info(alloc, &max_input, NULL));
    char *big = calloc(max_input + 1, 1);
    expect("an oversize input", rafi_invoke(alloc, echo, big, max_input + 1, out, 256, &len),
           RAFI_ERR_TOO_LARGE, "nothing was sent");
    rafi_request *request = NULL;
    expect("an oversize non-blocking input",
           rafi_invoke_start(alloc, echo, big, max_input + 1, out, 256, &request),
           RAFI_ERR_TOO_LARGE, "nothing was sent");
    if (request != NULL) failures++;
    free(big);

    /* Registered input memory used wrongly: a range past its end, a range no slot holds,
     * no buffer at all; nothing is sent. */
    rafi_buffer *buffer = NULL;
    CHECK(rafi_buffer_create(alloc, max_input + 64, &buffer));
    expect("a buffer range past its end",
           rafi_invoke_buffer(alloc, echo, buffer, max_input, 65, out, 256, &len),
           RAFI_ERR_ARG, "outside the buffer");
    expect("a buffer range larger than a slot",
           rafi_invoke_buffer(alloc, echo, buffer, 0, max_input + 1, out, 256, &len),
           RAFI_ERR_TOO_LARGE, "nothing was sent");
    expect("a NULL buffer", rafi_invoke_buffer(alloc, echo, NULL, 0, 1, out, 256, &len),
           RAFI_ERR_ARG, "buffer");
    CHECK(rafi_buffer_free(&buffer));

    /* An output larger than the caller's buffer: the length needed comes back. */
    char text[100];
    memset(text, 'a', sizeof text);
    expect("a short output buffer", rafi_invoke(alloc, echo, text, 100, out, 10, &len),
           RAFI_ERR_TRUNCATED, "does not fit");
    if (len != 100) {
        printf("rank %d: the length needed came back as %zu, not 100\n", rank, len);
        failures++;
    }

    /* A function that refuses its input: Black-Scholes and a malformed batch. */
    expect("an input the function refuses",
           rafi_invoke(alloc, blackscholes, "junk", 4, out, 256, &len), RAFI_ERR_REJECTED,
           "validation failed");
    /* ... and the allocation still works afterwards. */
    CHECK(rafi_invoke(alloc, echo, "still alive", 11, out, 256, &len));
    if (len != 11 || memcmp(out, "still alive", 11) != 0) failures++;

    const char *sync_dir = getenv("RAFI_TEST_SYNC_DIR");
    if (sync_dir != NULL) dead_executor(alloc, echo, sync_dir);

    CHECK(rafi_alloc_free(&alloc));
    int released = rafi_lease_release(&lease);
    if (sync_dir != NULL && released == RAFI_ERR_LEASE) {
        /* The lease of a killed executor ends too, once its manager has told the resource
         * manager: releasing it then is refused as ended, and the handle is freed anyway. */
        expect("releasing the lease of a killed one", released, RAFI_ERR_LEASE, "has ended");
    } else {
        CHECK(released);
    }
    if (lease != NULL) failures++;
    expect("releasing a released lease", rafi_lease_release(&lease), RAFI_OK, NULL);
    CHECK(rafi_disconnect(&client));

    int total = 0;
    MPI_Reduce(&failures, &total, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        if (total == 0)
            printf("errors: all checks passed\n");
        else
            printf("errors: %d check(s) failed\n", total);
    }
    MPI_Bcast(&total, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
