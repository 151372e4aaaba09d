/*
 * The contract of include/oramstore.h, checked from C against liboramstore (shared or static).
 *
 * Every failure must be reported through oram_storage_last_error() and
 * oram_storage_last_error_message() and leave the caller's buffers as they were; the closing
 * line says how many checks passed and failed, and the exit status is non-zero on any failure.
 */
#define _POSIX_C_SOURCE 200809L

#include <oramstore.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_int passed;
static atomic_int failed;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (cond) {                                                                   \
            atomic_fetch_add(&passed, 1);                                             \
        } else {                                                                      \
            atomic_fetch_add(&failed, 1);                                             \
            fprintf(stderr, "%s:%d: %s: failed: %s: ", __FILE__, __LINE__, __func__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

#define SENTINEL UINT64_C(0xA5A5A5A5A5A5A5A5)

/* The calling thread's last error message. */
static const char *last_message(void) {
    static _Thread_local char buf[512];
    oram_storage_last_error_message(buf, sizeof buf);
    return buf;
}

/* The last call on this thread failed with `code` and a message that contains `part`. */
static void expect_error(int32_t code, const char *part, const char *what) {
    int32_t got = oram_storage_last_error();
    const char *message = last_message();
    CHECK(got == code, "%s: code %d, expected %d (%s)", what, got, code, message);
    CHECK(strstr(message, part) != NULL, "%s: message \"%s\" lacks \"%s\"", what, message, part);
}

/* The last call on this thread succeeded, and its message is empty. */
static void expect_ok(const char *what) {
    int32_t got = oram_storage_last_error();
    const char *message = last_message();
    CHECK(got == ORAM_STORAGE_ERROR_OK && message[0] == '\0', "%s: code %d (%s)", what, got,
          message);
}

static uint64_t allocate(uint64_t count, uint64_t data_size, uint64_t meta_size) {
    uint64_t id = SENTINEL;
    allocate_oram_storage(count, data_size, meta_size, &id);
    return id;
}

static void fill(uint64_t *words, size_t n, uint64_t value) {
    for (size_t i = 0; i < n; i++) words[i] = value;
}

static bool all_equal(const uint64_t *words, size_t n, uint64_t value) {
    for (size_t i = 0; i < n; i++)
        if (words[i] != value) return false;
    return true;
}

/* The content item `index` gets in round `salt`: distinct for every word, index and salt. */
static uint64_t word_of(uint64_t index, size_t word, uint64_t salt) {
    return (index << 32) ^ ((uint64_t)word << 16) ^ (salt * UINT64_C(0x9E3779B97F4A7C15));
}

static void test_metadata_reads_zero_on_first_checkout(void) {
    uint64_t id = allocate(1000, 64, 16);
    CHECK(id != 0, "allocate failed: %s", last_message());
    expect_ok("allocate");
    uint64_t idx[] = {0, 999, 500, 500};
    uint64_t data[4 * 8], meta[4 * 2];
    fill(meta, 8, SENTINEL);
    checkout_oram_storage(id, idx, 4, data, 4 * 8, meta, 4 * 2);
    expect_ok("first checkout");
    CHECK(all_equal(meta, 8, 0), "fresh metadata is not zero");
    release_oram_storage(id);
    expect_ok("release");
}

static void test_round_trips_at_arbitrary_indices(void) {
    enum { COUNT = 100000, DW = 512 / 8, MW = 24 / 8 };
    uint64_t id = allocate(COUNT, DW * 8, MW * 8);
    CHECK(id != 0, "allocate failed: %s", last_message());
    static uint64_t data[5 * DW], meta[5 * MW];
    uint64_t in_idx[] = {7, COUNT - 1, 0, 31337, 4096};
    for (size_t k = 0; k < 5; k++) {
        for (size_t w = 0; w < DW; w++) data[k * DW + w] = word_of(in_idx[k], w, 1);
        for (size_t w = 0; w < MW; w++) meta[k * MW + w] = ~word_of(in_idx[k], w, 1);
    }
    checkin_oram_storage(id, in_idx, 5, data, 5 * DW, meta, 5 * MW);
    expect_ok("checkin");

    /* Another order, with a repeat and an item never written in between. */
    uint64_t out_idx[] = {31337, 7, 7, 12, COUNT - 1};
    fill(data, 5 * DW, SENTINEL);
    fill(meta, 5 * MW, SENTINEL);
    checkout_oram_storage(id, out_idx, 5, data, 5 * DW, meta, 5 * MW);
    expect_ok("checkout");
    bool same = true;
    for (size_t k = 0; k < 5; k++) {
        if (out_idx[k] == 12) {
            same = same && all_equal(meta + k * MW, MW, 0);
            continue;
        }
        for (size_t w = 0; w < DW; w++) same = same && data[k * DW + w] == word_of(out_idx[k], w, 1);
        for (size_t w = 0; w < MW; w++) same = same && meta[k * MW + w] == ~word_of(out_idx[k], w, 1);
    }
    CHECK(same, "checked-out items differ from what was checked in");

    /* Overwriting one item leaves its neighbours alone. */
    uint64_t one = 7;
    fill(data, DW, 1);
    fill(meta, MW, 2);
    checkin_oram_storage(id, &one, 1, data, DW, meta, MW);
    expect_ok("overwrite");
    uint64_t both[] = {7, 0};
    checkout_oram_storage(id, both, 2, data, 2 * DW, meta, 2 * MW);
    CHECK(all_equal(data, DW, 1) && all_equal(meta, MW, 2), "overwrite not read back");
    CHECK(data[DW] == word_of(0, 0, 1) && meta[MW] == ~word_of(0, 0, 1), "neighbour changed");

    /* An empty batch, even with null pointers, is a successful no-op. */
    checkout_oram_storage(id, NULL, 0, NULL, 0, NULL, 0);
    expect_ok("empty checkout");
    checkin_oram_storage(id, NULL, 0, NULL, 0, NULL, 0);
    expect_ok("empty checkin");
    release_oram_storage(id);
}

static void test_bad_ids(void) {
    uint64_t released = allocate(10, 8, 8);
    CHECK(released != 0, "allocate failed: %s", last_message());
    release_oram_storage(released);
    expect_ok("release");
    uint64_t live = allocate(10, 8, 8);
    CHECK(live != released, "an id was reused");
    uint64_t bad[] = {0, released, UINT64_MAX, live + 1000000};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        uint64_t idx = 1, data = SENTINEL, meta = SENTINEL;
        char id_text[32];
        snprintf(id_text, sizeof id_text, "%llu", (unsigned long long)bad[b]);
        checkout_oram_storage(bad[b], &idx, 1, &data, 1, &meta, 1);
        expect_error(ORAM_STORAGE_ERROR_UNKNOWN_ID, id_text, "checkout with a bad id");
        CHECK(data == SENTINEL && meta == SENTINEL, "a failed checkout wrote to its buffers");
        checkin_oram_storage(bad[b], &idx, 1, &data, 1, &meta, 1);
        expect_error(ORAM_STORAGE_ERROR_UNKNOWN_ID, id_text, "checkin with a bad id");
        release_oram_storage(bad[b]);
        expect_error(ORAM_STORAGE_ERROR_UNKNOWN_ID, id_text, "release of a bad id");
    }
    /* The failures touched no live storage. */
    uint64_t idx = 1, data = 5, meta = 6;
    checkout_oram_storage(live, &idx, 1, &data, 1, &meta, 1);
    expect_ok("checkout of the live id");
    CHECK(meta == 0, "a failed checkin with a bad id wrote to another storage");
    release_oram_storage(live);
}

static void test_bad_sizes(void) {
    struct {
        uint64_t count, data_size, meta_size;
    } bad[] = {
        {0, 8, 8},                            /* no items */
        {10, 0, 8},                           /* zero sizes */
        {10, 8, 0},
        {10, 12, 8},                          /* not multiples of 8 */
        {10, 8, 4},
        {10, 1, 8},
        {UINT64_MAX, 8, 8},                   /* count * size overflows 64 bits */
        {UINT64_C(1) << 61, 8, 8},
        {UINT64_C(1) << 60, 8, 8},            /* 2^63 bytes: more than PTRDIFF_MAX */
        {1, UINT64_MAX - 7, 8},
        {UINT64_C(1) << 59, 8, 8},            /* each segment fits, both together do not */
    };
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        uint64_t id = allocate(bad[b].count, bad[b].data_size, bad[b].meta_size);
        CHECK(id == 0, "allocate(%llu, %llu, %llu) gave id %llu",
              (unsigned long long)bad[b].count, (unsigned long long)bad[b].data_size,
              (unsigned long long)bad[b].meta_size, (unsigned long long)id);
        expect_error(ORAM_STORAGE_ERROR_BAD_SIZE, "", "a bad size");
    }
    allocate_oram_storage(10, 8, 8, NULL);
    expect_error(ORAM_STORAGE_ERROR_NULL_ID, "null", "a null id pointer");
}

/* A storage of 16 items of 4 data and 2 metadata words, for the buffer and index checks. */
enum { BDW = 4, BMW = 2 };

static void test_bad_buffers(void) {
    uint64_t id = allocate(16, BDW * 8, BMW * 8);
    CHECK(id != 0, "allocate failed: %s", last_message());
    uint64_t idx[] = {1, 2};
    uint64_t data[2 * BDW], meta[2 * BMW];

    struct {
        const char *what, *part;
        const uint64_t *idx;
        size_t idx_len;
        uint64_t *data;
        size_t data_len;
        uint64_t *meta;
        size_t meta_len;
    } cases[] = {
        {"short databuf", "expected 64", idx, 2, data, 2 * BDW - 1, meta, 2 * BMW},
        {"long databuf", "expected 64", idx, 2, data, 2 * BDW + 1, meta, 2 * BMW},
        {"short metabuf", "expected 32", idx, 2, data, 2 * BDW, meta, 2 * BMW - 1},
        {"empty buffers", "expected 64", idx, 2, data, 0, meta, 0},
        {"null idx", "idx is null", NULL, 2, data, 2 * BDW, meta, 2 * BMW},
        {"null databuf", "databuf is null", idx, 2, NULL, 2 * BDW, meta, 2 * BMW},
        {"null metabuf", "metabuf is null", idx, 2, data, 2 * BDW, NULL, 2 * BMW},
        {"SIZE_MAX databuf", "PTRDIFF", idx, 2, data, SIZE_MAX, meta, 2 * BMW},
        {"overflowing metabuf", "PTRDIFF", idx, 2, data, 2 * BDW, meta, SIZE_MAX / 8 + 1},
        {"idx over PTRDIFF_MAX", "PTRDIFF", idx, (size_t)PTRDIFF_MAX / 8 + 1, data, 2 * BDW,
         meta, 2 * BMW},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fill(data, 2 * BDW, SENTINEL);
        fill(meta, 2 * BMW, SENTINEL);
        checkout_oram_storage(id, cases[c].idx, cases[c].idx_len, cases[c].data,
                              cases[c].data_len, cases[c].meta, cases[c].meta_len);
        expect_error(ORAM_STORAGE_ERROR_BAD_BUFFER, cases[c].part, cases[c].what);
        CHECK(all_equal(data, 2 * BDW, SENTINEL) && all_equal(meta, 2 * BMW, SENTINEL),
              "%s: a failed checkout wrote to its buffers", cases[c].what);
        checkin_oram_storage(id, cases[c].idx, cases[c].idx_len, cases[c].data,
                             cases[c].data_len, cases[c].meta, cases[c].meta_len);
        expect_error(ORAM_STORAGE_ERROR_BAD_BUFFER, cases[c].part, cases[c].what);
    }
    /* None of the refused checkins wrote anything. */
    checkout_oram_storage(id, idx, 2, data, 2 * BDW, meta, 2 * BMW);
    expect_ok("checkout after refused checkins");
    CHECK(all_equal(meta, 2 * BMW, 0), "a refused checkin wrote metadata");
    release_oram_storage(id);
}

static void test_outputs_that_overlap_are_refused(void) {
    uint64_t id = allocate(16, BDW * 8, BMW * 8);
    uint64_t in_idx[] = {1, 2}, in_data[2 * BDW], in_meta[2 * BMW];
    fill(in_data, 2 * BDW, 5);
    fill(in_meta, 2 * BMW, 6);
    checkin_oram_storage(id, in_idx, 2, in_data, 2 * BDW, in_meta, 2 * BMW);
    expect_ok("checkin");

    /* One arena holds the buffers; the index list (1, 2) is copied to where each case wants. */
    uint64_t arena[32];
    struct {
        const char *what;
        size_t idx_at, data_at, meta_at; /* word offsets into the arena; idx_at 99: separate */
    } cases[] = {
        {"databuf is metabuf", 99, 0, 0},
        {"metabuf inside databuf", 99, 0, 3},
        {"databuf inside metabuf", 99, 8, 6},
        {"idx inside databuf", 4, 0, 16},
        {"idx inside metabuf", 17, 0, 16},
        {"idx across the end of metabuf", 15, 0, 12},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fill(arena, 32, SENTINEL);
        const uint64_t *idx = in_idx;
        if (cases[c].idx_at != 99) {
            arena[cases[c].idx_at] = 1;
            arena[cases[c].idx_at + 1] = 2;
            idx = arena + cases[c].idx_at;
        }
        uint64_t before[32];
        memcpy(before, arena, sizeof arena);
        checkout_oram_storage(id, idx, 2, arena + cases[c].data_at, 2 * BDW,
                              arena + cases[c].meta_at, 2 * BMW);
        expect_error(ORAM_STORAGE_ERROR_BAD_BUFFER, "overlap", cases[c].what);
        CHECK(memcmp(before, arena, sizeof arena) == 0, "%s: a refused checkout wrote",
              cases[c].what);
    }
    /* Adjacent buffers share no byte. */
    fill(arena, 32, SENTINEL);
    checkout_oram_storage(id, in_idx, 2, arena, 2 * BDW, arena + 2 * BDW, 2 * BMW);
    expect_ok("adjacent buffers");
    CHECK(all_equal(arena, 2 * BDW, 5) && all_equal(arena + 2 * BDW, 2 * BMW, 6),
          "adjacent buffers read back wrong");
    CHECK(all_equal(arena + 2 * BDW + 2 * BMW, 32 - 2 * BDW - 2 * BMW, SENTINEL),
          "a checkout wrote past its buffers");
    /* A checkin only reads, so its inputs may overlap each other and the index list. */
    uint64_t shared[2 * BDW] = {3, 4, 9, 9, 9, 9, 9, 9};
    checkin_oram_storage(id, shared, 2, shared, 2 * BDW, shared, 2 * BMW);
    expect_ok("checkin from overlapping inputs");
    uint64_t out_idx[] = {3, 4}, out_data[2 * BDW], out_meta[2 * BMW];
    checkout_oram_storage(id, out_idx, 2, out_data, 2 * BDW, out_meta, 2 * BMW);
    CHECK(memcmp(out_data, shared, sizeof out_data) == 0 && out_meta[0] == 3 &&
              out_meta[1] == 4 && out_meta[2] == 9 && out_meta[3] == 9,
          "overlapping inputs read back wrong");
    release_oram_storage(id);
}

static void test_bad_indices(void) {
    uint64_t id = allocate(16, BDW * 8, BMW * 8);
    uint64_t one = 5, data[3 * BDW], meta[3 * BMW];
    fill(data, BDW, 11);
    fill(meta, BMW, 12);
    checkin_oram_storage(id, &one, 1, data, BDW, meta, BMW);
    expect_ok("checkin");

    uint64_t out_of_range[][3] = {{5, 16, 1}, {UINT64_MAX, 5, 1}, {0, 1, 17}};
    for (size_t c = 0; c < 3; c++) {
        fill(data, 3 * BDW, SENTINEL);
        fill(meta, 3 * BMW, SENTINEL);
        checkout_oram_storage(id, out_of_range[c], 3, data, 3 * BDW, meta, 3 * BMW);
        expect_error(ORAM_STORAGE_ERROR_INDEX_OUT_OF_RANGE, "out of range", "checkout index");
        CHECK(all_equal(data, 3 * BDW, SENTINEL) && all_equal(meta, 3 * BMW, SENTINEL),
              "a refused checkout wrote to its buffers");
        checkin_oram_storage(id, out_of_range[c], 3, data, 3 * BDW, meta, 3 * BMW);
        expect_error(ORAM_STORAGE_ERROR_INDEX_OUT_OF_RANGE, "out of range", "checkin index");
    }
    uint64_t duplicate[] = {5, 2, 5};
    checkin_oram_storage(id, duplicate, 3, data, 3 * BDW, meta, 3 * BMW);
    expect_error(ORAM_STORAGE_ERROR_DUPLICATE_INDEX, "index 5 appears twice", "duplicate index");
    /* Item 5 still holds what the first checkin wrote: no refused checkin touched it. */
    checkout_oram_storage(id, &one, 1, data, BDW, meta, BMW);
    expect_ok("checkout");
    CHECK(all_equal(data, BDW, 11) && all_equal(meta, BMW, 12), "a refused checkin wrote");
    /* A checkout may repeat an index. */
    checkout_oram_storage(id, duplicate, 3, data, 3 * BDW, meta, 3 * BMW);
    expect_ok("checkout with a repeated index");
    release_oram_storage(id);
}

static void test_last_error_is_cleared_and_truncated(void) {
    release_oram_storage(0);
    const char *full = last_message();
    size_t length = oram_storage_last_error_message(NULL, 0);
    CHECK(length == strlen(full) && length > 10, "length %zu of \"%s\"", length, full);
    char small[5] = "xxxx";
    CHECK(oram_storage_last_error_message(small, sizeof small) == length, "returned length");
    CHECK(strncmp(small, full, 4) == 0 && small[4] == '\0', "truncated to \"%s\"", small);
    char untouched[2] = "y";
    oram_storage_last_error_message(untouched, 0);
    CHECK(untouched[0] == 'y', "a zero-length buffer was written");
    uint64_t id = allocate(1, 8, 8);
    expect_ok("a success clears the last error");
    CHECK(oram_storage_last_error_message(NULL, 0) == 0, "message after a success");
    release_oram_storage(id);
}

/* Threads: each has a storage of its own and shares one with the others. */
enum { THREADS = 4, ROUNDS = 300, SHARED_PER_THREAD = 64, TDW = 16, TMW = 2 };

struct worker {
    int number;
    uint64_t shared_id;
    uint64_t own_id;
    bool ok;
};

static void *work(void *arg) {
    struct worker *w = arg;
    w->own_id = allocate(1024, TDW * 8, TMW * 8);
    bool ok = w->own_id != 0 && oram_storage_last_error() == ORAM_STORAGE_ERROR_OK;
    uint64_t data[TDW], meta[TMW];
    for (uint64_t r = 0; r < ROUNDS && ok; r++) {
        uint64_t salt = (uint64_t)w->number * 1000 + r;
        uint64_t ids[] = {w->own_id, w->shared_id};
        uint64_t index[] = {(r * 37) % 1024,
                            (uint64_t)w->number * SHARED_PER_THREAD + r % SHARED_PER_THREAD};
        for (int s = 0; s < 2; s++) {
            for (size_t i = 0; i < TDW; i++) data[i] = word_of(index[s], i, salt);
            meta[0] = salt;
            meta[1] = index[s];
            checkin_oram_storage(ids[s], &index[s], 1, data, TDW, meta, TMW);
            ok = ok && oram_storage_last_error() == ORAM_STORAGE_ERROR_OK;
            fill(data, TDW, 0);
            fill(meta, TMW, 0);
            checkout_oram_storage(ids[s], &index[s], 1, data, TDW, meta, TMW);
            ok = ok && oram_storage_last_error() == ORAM_STORAGE_ERROR_OK;
            ok = ok && meta[0] == salt && meta[1] == index[s];
            for (size_t i = 0; i < TDW; i++) ok = ok && data[i] == word_of(index[s], i, salt);
        }
        /* An error on this thread is this thread's own, whatever the others do meanwhile. */
        uint64_t beyond = 1024 + (uint64_t)w->number;
        checkout_oram_storage(w->own_id, &beyond, 1, data, TDW, meta, TMW);
        ok = ok && oram_storage_last_error() == ORAM_STORAGE_ERROR_INDEX_OUT_OF_RANGE;
        char expected[64];
        snprintf(expected, sizeof expected, "index %llu ", (unsigned long long)beyond);
        ok = ok && strstr(last_message(), expected) != NULL;
    }
    w->ok = ok;
    return NULL;
}

static void test_threads(void) {
    uint64_t shared = allocate(THREADS * SHARED_PER_THREAD, TDW * 8, TMW * 8);
    CHECK(shared != 0, "allocate failed: %s", last_message());
    struct worker workers[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t] = (struct worker){.number = t, .shared_id = shared};
        CHECK(pthread_create(&threads[t], NULL, work, &workers[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < THREADS; t++) {
        CHECK(pthread_join(threads[t], NULL) == 0, "pthread_join");
        CHECK(workers[t].ok, "thread %d saw a wrong result or error", t);
    }
    /* Ids are distinct across threads, and each works from this thread too. */
    for (int t = 0; t < THREADS; t++) {
        CHECK(workers[t].own_id != shared, "thread %d got the shared id", t);
        for (int u = 0; u < t; u++)
            CHECK(workers[t].own_id != workers[u].own_id, "threads %d and %d share an id", t, u);
        release_oram_storage(workers[t].own_id);
        expect_ok("release of a thread's storage");
    }
    /* Every thread's last item in the shared storage is there. */
    for (int t = 0; t < THREADS; t++) {
        uint64_t r = ROUNDS - 1, index = (uint64_t)t * SHARED_PER_THREAD + r % SHARED_PER_THREAD;
        uint64_t data[TDW], meta[TMW];
        checkout_oram_storage(shared, &index, 1, data, TDW, meta, TMW);
        CHECK(meta[0] == (uint64_t)t * 1000 + r && data[3] == word_of(index, 3, meta[0]),
              "thread %d's last write to the shared storage is missing", t);
    }
    release_oram_storage(shared);
    expect_ok("release of the shared storage");
}

int main(void) {
    test_metadata_reads_zero_on_first_checkout();
    test_round_trips_at_arbitrary_indices();
    test_bad_ids();
    test_bad_sizes();
    test_bad_buffers();
    test_outputs_that_overlap_are_refused();
    test_bad_indices();
    test_last_error_is_cleared_and_truncated();
    test_threads();
    int p = atomic_load(&passed), f = atomic_load(&failed);
    printf("%d passed, %d failed\n", p, f);
    return f == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
