/* test_dist.c - the distributed layer of a single-rank run: one rank, the
 * collectives are the identity (bit for bit), groups have one member, the
 * counters count, bad deadlines are refused; the rank-order sum the MPI
 * allreduce matches; and the single-rank build refusing to run as one of
 * several MPI ranks.  tests/e2e_mpi.sh tests the MPI build with real ranks. */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include <stdlib.h>

#include "dist.h"

/* Values that a careless sum or copy would change: signed zeros, subnormals,
 * the extremes, infinities, a NaN with a payload. */
static void awkward(float *v, size_t n) {
    const uint32_t bits[] = {0x80000000u, 0x00000001u, 0x007fffffu, 0x7f7fffffu, 0xff7fffffu,
                             0x7f800000u, 0xff800000u, 0x7fc12345u, 0x3eaaaaabu, 0xbf800001u};
    for (size_t i = 0; i < n; i++) {
        uint32_t u = bits[i % (sizeof bits / sizeof *bits)] ^ (uint32_t)(i / 10);
        memcpy(&v[i], &u, 4);
    }
}

static int setup(void **state) {
    (void)state;
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("GPTOSS_DIST_TIMEOUT");
    return gpo_dist_init(NULL, NULL) == GPO_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    gpo_dist_finalize();
    return 0;
}

static void test_one_rank(void **state) {
    (void)state;
    assert_int_equal(gpo_dist_size(), 1);
    assert_int_equal(gpo_dist_rank(), 0);
    assert_true(strlen(gpo_dist_host()) > 0);
    assert_string_equal(gpo_dist_host_of(0), gpo_dist_host());
    assert_string_equal(gpo_dist_host_of(1), "?");
    assert_int_equal(gpo_dist_comm_size(NULL), 1);
    assert_int_equal(gpo_dist_comm_rank(NULL), 0);
}

static void test_collectives_are_identity(void **state) {
    (void)state;
    enum { N = 1000 };
    float buf[N], want[N];
    awkward(buf, N);
    memcpy(want, buf, sizeof buf);
    gpo_dist_reset_stats();
    assert_int_equal(gpo_dist_allreduce_sum(NULL, buf, N), GPO_OK);
    assert_memory_equal(buf, want, sizeof buf);
    assert_int_equal(gpo_dist_bcast(NULL, buf, sizeof buf, 0), GPO_OK);
    assert_memory_equal(buf, want, sizeof buf);
    assert_int_equal(gpo_dist_barrier(NULL), GPO_OK);
    assert_int_equal(gpo_dist_allreduce_sum(NULL, NULL, 0), GPO_OK);
    struct gpo_dist_stats st;
    gpo_dist_get_stats(&st);
    assert_int_equal(st.n_calls, 4);
    assert_int_equal(st.bytes_sent, 0);
    assert_int_equal(st.bytes_received, 0);
    /* A broadcast from a rank that is not in the group names it. */
    assert_int_equal(gpo_dist_bcast(NULL, buf, 4, 1), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "root 1"));
}

static void test_groups(void **state) {
    (void)state;
    gpo_dist_comm *g = NULL;
    assert_int_equal(gpo_dist_split(NULL, 3, 0, &g), GPO_OK);
    assert_non_null(g);
    assert_int_equal(gpo_dist_comm_size(g), 1);
    assert_int_equal(gpo_dist_comm_rank(g), 0);
    assert_int_equal(gpo_dist_comm_world_rank(g, 0), 0);
    float x[3] = {1.5f, -0.0f, 3e-39f}, y[3];
    memcpy(y, x, sizeof x);
    assert_int_equal(gpo_dist_allreduce_sum(g, x, 3), GPO_OK);
    assert_memory_equal(x, y, sizeof x);
    gpo_dist_comm_free(g);
}

static void test_timeout(void **state) {
    (void)state;
    assert_true(gpo_dist_timeout() > 0);
    assert_int_equal(gpo_dist_set_timeout(2.5), GPO_OK);
    assert_true(gpo_dist_timeout() == 2.5);
    const double bad[] = {0.0, -1.0, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(gpo_dist_set_timeout(bad[i]), GPO_ERR_ARG);
        assert_non_null(strstr(gpo_last_error(), "timeout"));
    }
    assert_true(gpo_dist_timeout() == 2.5);
    assert_int_equal(gpo_dist_set_timeout(GPO_DIST_TIMEOUT_DEFAULT), GPO_OK);
}

/* The reference the MPI allreduce must match: parts added in rank order, and
 * that order shows (float addition is not associative). */
static void test_sum_in_order(void **state) {
    (void)state;
    const float a[2] = {1e8f, -0.0f}, b[2] = {1.0f, -0.0f}, c[2] = {-1e8f, -0.0f};
    const float *abc[3] = {a, b, c}, *acb[3] = {a, c, b};
    float out[2];
    gpo_dist_sum_in_order(out, abc, 3, 2);
    assert_true(out[0] == 0.0f); /* (1e8 + 1) rounds back to 1e8 */
    assert_true(out[1] == 0.0f && signbit(out[1]));
    gpo_dist_sum_in_order(out, acb, 3, 2);
    assert_true(out[0] == 1.0f);
    gpo_dist_sum_in_order(out, abc, 1, 2);
    assert_memory_equal(out, a, sizeof a);
}

/* Without MPI, a process started as one of several ranks must not run as if it
 * were alone; a bad $GPTOSS_DIST_TIMEOUT is named. */
static void test_stub_refuses(void **state) {
    (void)state;
    if (gpo_dist_built()) skip();
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    assert_int_equal(gpo_dist_init(NULL, NULL), GPO_ERR_UNSUPPORTED);
    assert_non_null(strstr(gpo_last_error(), "one of 4 ranks"));
    assert_non_null(strstr(gpo_last_error(), "MPI=1"));
    unsetenv("OMPI_COMM_WORLD_SIZE");
    setenv("GPTOSS_DIST_TIMEOUT", "soon", 1);
    assert_int_equal(gpo_dist_init(NULL, NULL), GPO_ERR_ARG);
    assert_non_null(strstr(gpo_last_error(), "GPTOSS_DIST_TIMEOUT"));
    setenv("GPTOSS_DIST_TIMEOUT", "7", 1);
    assert_int_equal(gpo_dist_init(NULL, NULL), GPO_OK);
    assert_true(gpo_dist_timeout() == 7.0);
    unsetenv("GPTOSS_DIST_TIMEOUT");
    assert_int_equal(gpo_dist_set_timeout(GPO_DIST_TIMEOUT_DEFAULT), GPO_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_rank),    cmocka_unit_test(test_collectives_are_identity),
        cmocka_unit_test(test_groups),      cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_sum_in_order), cmocka_unit_test(test_stub_refuses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
