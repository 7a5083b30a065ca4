/*
 * The offer policy of Mesos mode (launcher/offers.c) on offers written as
 * the master's JSON: executors that fit, several per offer, the room and
 * the caps (offers.max_cores, offers.max_executors), attribute constraints
 * of each type, the failed-agent rule, malformed offers, and launch
 * resources that are copies of the offered objects (role, reservations,
 * allocation_info kept) with only their amounts changed. A random test
 * checks plans against a plain model: as many executors as the totals
 * allow, each given exactly what it needs, nothing taken twice.
 *
 * LABELS: unit
 */
#include "launcher/offers.h"

#include "common_int.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, 0, &err);

    if (v == NULL)
        fail_msg("bad test JSON (%s): %s", err.text, text);
    return v;
}

/* An offer on agent S1 with cpus and mem ("*" role, allocation_info) and the given attributes. */
static json_t *offer(double cpus, double mem, const char *attributes)
{
    char text[2048];

    snprintf(text, sizeof(text),
             "{\"id\":{\"value\":\"O1\"},\"framework_id\":{\"value\":\"F1\"},"
             "\"agent_id\":{\"value\":\"S1\"},\"hostname\":\"node1\","
             "\"allocation_info\":{\"role\":\"*\"},\"resources\":["
             "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":%g},\"role\":\"*\","
             "\"allocation_info\":{\"role\":\"*\"}},"
             "{\"name\":\"mem\",\"type\":\"SCALAR\",\"scalar\":{\"value\":%g},\"role\":\"*\","
             "\"allocation_info\":{\"role\":\"*\"}},"
             "{\"name\":\"ports\",\"type\":\"RANGES\",\"ranges\":{\"range\":[{\"begin\":31000,"
             "\"end\":32000}]},\"role\":\"*\",\"allocation_info\":{\"role\":\"*\"}}],"
             "\"attributes\":%s,\"unknown_field\":[1,2]}",
             cpus, mem, attributes != NULL ? attributes : "[]");
    return parse(text);
}

static const sp__offer_need_t need_2x1408 = {.cpus = 2, .mem = 1408};

static double scalar_of(const json_t *r)
{
    return json_number_value(json_object_get(json_object_get(r, "scalar"), "value"));
}

/* Sum of name in one executor's resources. */
static double executor_total(const json_t *mine, const char *name)
{
    double sum = 0;
    size_t i;
    json_t *r;

    json_array_foreach(mine, i, r)
    {
        if (strcmp(json_string_value(json_object_get(r, "name")), name) == 0)
            sum += scalar_of(r);
    }
    return sum;
}

static void test_offers_one_executor_fits(void **state)
{
    json_t *o = offer(2, 2048, NULL);
    sp__offer_plan_t plan;

    (void)state;
    assert_int_equal(sp__offer_plan(o, &need_2x1408, 5, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
    assert_int_equal(plan.executors, 1);
    assert_int_equal(json_array_size(plan.resources), 1);
    assert_true(executor_total(json_array_get(plan.resources, 0), "cpus") == 2.0);
    assert_true(executor_total(json_array_get(plan.resources, 0), "mem") == 1408.0);
    /* ports are not asked for. */
    assert_true(executor_total(json_array_get(plan.resources, 0), "ports") == 0.0);
    assert_int_equal(json_array_size(json_array_get(plan.resources, 0)), 2);
    sp__offer_plan_clear(&plan);
    sp__offer_plan_clear(&plan);
    json_decref(o);
}

static void test_offers_several_executors_per_offer(void **state)
{
    json_t *o = offer(9, 100000, NULL);
    sp__offer_plan_t plan;

    (void)state;
    /* cpus bound: 9 / 2 = 4. */
    assert_int_equal(sp__offer_plan(o, &need_2x1408, 10, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
    assert_int_equal(plan.executors, 4);
    for (size_t e = 0; e < 4; e++) {
        assert_true(executor_total(json_array_get(plan.resources, e), "cpus") == 2.0);
        assert_true(executor_total(json_array_get(plan.resources, e), "mem") == 1408.0);
    }
    sp__offer_plan_clear(&plan);
    /* room bound. */
    assert_int_equal(sp__offer_plan(o, &need_2x1408, 3, 0, &plan), SP_OK);
    assert_int_equal(plan.executors, 3);
    sp__offer_plan_clear(&plan);
    json_decref(o);
    /* mem bound: 3 * 1408 = 4224 <= 5000 < 4 * 1408. */
    o = offer(64, 5000, NULL);
    assert_int_equal(sp__offer_plan(o, &need_2x1408, 10, 0, &plan), SP_OK);
    assert_int_equal(plan.executors, 3);
    sp__offer_plan_clear(&plan);
    json_decref(o);
}

static void test_offers_too_small_unneeded_failed_agent(void **state)
{
    json_t *small_cpus = offer(1.999, 100000, NULL), *small_mem = offer(8, 1407, NULL);
    sp__offer_plan_t plan;

    (void)state;
    assert_int_equal(sp__offer_plan(small_cpus, &need_2x1408, 1, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_TOO_SMALL);
    assert_null(plan.resources);
    assert_non_null(strstr(plan.why, "1.999 cpus"));
    assert_int_equal(sp__offer_plan(small_mem, &need_2x1408, 1, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_TOO_SMALL);
    assert_int_equal(sp__offer_plan(small_mem, &need_2x1408, 0, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_UNNEEDED);
    json_decref(small_cpus);
    json_decref(small_mem);

    json_t *big = offer(16, 100000, NULL);
    assert_int_equal(sp__offer_plan(big, &need_2x1408, 1, 1, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
    sp__offer_plan_clear(&plan);
    assert_int_equal(sp__offer_plan(big, &need_2x1408, 1, SP__OFFER_MAX_AGENT_FAILURES, &plan),
                     SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_AGENT_FAILED);
    assert_non_null(strstr(plan.why, "S1"));
    assert_string_equal(sp__offer_verdict_str(SP_OFFER_AGENT_FAILED), "failed agent");
    json_decref(big);
}

static void test_offers_malformed_offers_are_refused(void **state)
{
    static const char *const bad[] = {
        "{}",
        "{\"id\":{\"value\":\"O1\"}}",
        "{\"id\":{\"value\":\"O1\"},\"agent_id\":{\"value\":\"S1\"}}",
        "{\"id\":{\"value\":7},\"agent_id\":{\"value\":\"S1\"},\"resources\":[]}",
        "{\"id\":{\"value\":\"O1\"},\"agent_id\":\"S1\",\"resources\":[]}",
        "{\"id\":{\"value\":\"O1\"},\"agent_id\":{\"value\":\"S1\"},\"resources\":{}}",
        "[1,2,3]",
    };
    sp__offer_plan_t plan;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *o = parse(bad[i]);
        assert_int_equal(sp__offer_plan(o, &need_2x1408, 1, 0, &plan), SP_OK);
        if (plan.verdict != SP_OFFER_MALFORMED)
            fail_msg("%s: verdict %s", bad[i], sp__offer_verdict_str(plan.verdict));
        json_decref(o);
    }
    /* Resources with missing or wrong fields are not counted; the rest still serves. */
    json_t *o = parse("{\"id\":{\"value\":\"O1\"},\"agent_id\":{\"value\":\"S1\"},\"resources\":["
                      "{\"name\":\"cpus\",\"type\":\"SCALAR\"},"
                      "{\"name\":\"cpus\",\"scalar\":{\"value\":8}},"
                      "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":\"8\"}},"
                      "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":-8}},"
                      "{\"type\":\"SCALAR\",\"scalar\":{\"value\":8}},"
                      "7,"
                      "{\"name\":\"mem\",\"type\":\"SCALAR\",\"scalar\":{\"value\":4096}}]}");
    assert_int_equal(sp__offer_plan(o, &need_2x1408, 1, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_TOO_SMALL);
    assert_true(sp__offer_scalar(o, "cpus") == 0.0);
    assert_true(sp__offer_scalar(o, "mem") == 4096.0);
    assert_null(sp__offer_id(NULL));
    json_decref(o);
}

static void test_offers_resources_are_copies_with_new_amounts(void **state)
{
    /* Reserved cpus (role r1, dynamic reservation) and unreserved ones; mem split in two. */
    json_t *o =
        parse("{\"id\":{\"value\":\"O9\"},\"agent_id\":{\"value\":\"S2\"},\"resources\":["
              "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":3},\"role\":\"*\","
              "\"allocation_info\":{\"role\":\"r1\"}},"
              "{\"name\":\"cpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":1.5},\"role\":\"r1\","
              "\"reservations\":[{\"type\":\"DYNAMIC\",\"role\":\"r1\",\"principal\":\"p\"}],"
              "\"allocation_info\":{\"role\":\"r1\"},\"revocable\":{}},"
              "{\"name\":\"mem\",\"type\":\"SCALAR\",\"scalar\":{\"value\":1000},\"role\":\"*\","
              "\"allocation_info\":{\"role\":\"r1\"},\"disk\":{\"x\":1}},"
              "{\"name\":\"mem\",\"type\":\"SCALAR\",\"scalar\":{\"value\":5000},\"role\":\"*\","
              "\"allocation_info\":{\"role\":\"r1\"}}]}");
    sp__offer_need_t need = {.cpus = 2, .mem = 1408};
    sp__offer_plan_t plan;
    json_t *first, *second, *r;

    (void)state;
    assert_int_equal(sp__offer_plan(o, &need, 4, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
    assert_int_equal(plan.executors, 2);
    first = json_array_get(plan.resources, 0);
    second = json_array_get(plan.resources, 1);
    /* Executor 0: the 1.5 reserved cpus first, then 0.5 unreserved; 1000 + 408 mem. */
    assert_int_equal(json_array_size(first), 4);
    r = json_array_get(first, 0);
    assert_true(scalar_of(r) == 1.5);
    assert_string_equal(json_string_value(json_object_get(r, "role")), "r1");
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(r, "reservations"), 0), "principal")),
                        "p");
    assert_true(json_is_object(json_object_get(r, "revocable")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r, "allocation_info"), "role")), "r1");
    r = json_array_get(first, 1);
    assert_true(fabs(scalar_of(r) - 0.5) < 1e-9);
    assert_string_equal(json_string_value(json_object_get(r, "role")), "*");
    r = json_array_get(first, 2);
    assert_true(scalar_of(r) == 1000.0);
    assert_true(json_is_object(json_object_get(r, "disk")));
    assert_true(scalar_of(json_array_get(first, 3)) == 408.0);
    /* Executor 1: what is left of the unreserved objects. */
    assert_true(executor_total(second, "cpus") == 2.0);
    assert_true(executor_total(second, "mem") == 1408.0);
    /* Every copy holds the fields of its source, amounts aside. */
    for (size_t e = 0; e < 2; e++) {
        size_t i;
        json_array_foreach(json_array_get(plan.resources, e), i, r)
        {
            json_t *ai = json_object_get(r, "allocation_info");
            assert_string_equal(json_string_value(json_object_get(ai, "role")), "r1");
            assert_string_equal(json_string_value(json_object_get(r, "type")), "SCALAR");
        }
    }
    /* The offer itself is left as it was. */
    assert_true(sp__offer_scalar(o, "cpus") == 4.5);
    sp__offer_plan_clear(&plan);
    json_decref(o);
}

static void test_offers_thousandths_add_up(void **state)
{
    /* 1.1 cpus three times out of 3.3: floating point alone would leave 3 short by 4e-16. */
    json_t *o = offer(3.3, 30000, NULL);
    sp__offer_need_t need = {.cpus = 1.1, .mem = 1};
    sp__offer_plan_t plan;

    (void)state;
    assert_int_equal(sp__offer_plan(o, &need, 10, 0, &plan), SP_OK);
    assert_int_equal(plan.executors, 3);
    sp__offer_plan_clear(&plan);
    json_decref(o);
}

static void test_offers_sizes_and_caps(void **state)
{
    uint32_t n = 0;

    (void)state;
    assert_true(sp__offer_executor_mem(1ull << 30) == 1024.0 + 384.0);
    assert_true(sp__offer_executor_mem(8ull << 30) == 9012.0); /* 8192 + 819.2, rounded up */
    assert_true(sp__offer_executor_mem(0) == 384.0);
    assert_int_equal(sp__offer_wanted(4, 2, 0, 0, &n), SP_OK);
    assert_int_equal(n, 4);
    assert_int_equal(sp__offer_wanted(4, 2, 6, 0, &n), SP_OK);
    assert_int_equal(n, 3);
    assert_int_equal(sp__offer_wanted(4, 2, 0, 2, &n), SP_OK);
    assert_int_equal(n, 2);
    assert_int_equal(sp__offer_wanted(4, 2, 5, 1, &n), SP_OK);
    assert_int_equal(n, 1);
    n = 77;
    assert_int_equal(sp__offer_wanted(4, 2, 1, 0, &n), SP_ERR_BAD_CONF);
    assert_non_null(strstr(sp_last_error(), "offers.max_cores"));
    assert_int_equal(n, 77);
    assert_int_equal(sp__offer_wanted(0, 2, 0, 0, &n), SP_ERR_INVALID_PARAM);
}

/* Constraint text against attribute JSON: the expected verdict. */
static void expect_match(const char *constraints, const char *attributes, bool want)
{
    sp__offer_constraints_t *c = NULL;
    json_t *attrs = parse(attributes);

    assert_int_equal(sp__offer_constraints_parse(constraints, &c), SP_OK);
    if (sp__offer_constraints_match(c, attrs) != want)
        fail_msg("constraints '%s' on %s: want %s", constraints, attributes,
                 want ? "a match" : "no match");
    sp__offer_constraints_destroy(c);
    json_decref(attrs);
}

static void test_offers_constraints_of_each_type(void **state)
{
    const char *text = "[{\"name\":\"rack\",\"type\":\"TEXT\",\"text\":{\"value\":\"r2\"}}]";
    const char *scalar = "[{\"name\":\"gpus\",\"type\":\"SCALAR\",\"scalar\":{\"value\":4}}]";
    const char *ranges = "[{\"name\":\"slots\",\"type\":\"RANGES\",\"ranges\":{\"range\":["
                         "{\"begin\":10,\"end\":20},{\"begin\":30,\"end\":30}]}}]";
    const char *set = "[{\"name\":\"zone\",\"type\":\"SET\",\"set\":{\"item\":[\"a\",\"b\","
                      "\"c\"]}}]";

    (void)state;
    /* TEXT: equal to one of the values. */
    expect_match("rack:r1,r2", text, true);
    expect_match("rack:r1", text, false);
    expect_match(" rack : r3 , r2 ", text, true);
    expect_match("rack:R2", text, false);
    /* Presence only. */
    expect_match("rack", text, true);
    expect_match("rack:", text, true);
    expect_match("zone", text, false);
    /* SCALAR: some value <= the offered one. */
    expect_match("gpus:4", scalar, true);
    expect_match("gpus:2", scalar, true);
    expect_match("gpus:5", scalar, false);
    expect_match("gpus:8,3.5", scalar, true);
    expect_match("gpus:lots", scalar, false);
    /* RANGES: some value inside a range. */
    expect_match("slots:15", ranges, true);
    expect_match("slots:30", ranges, true);
    expect_match("slots:25", ranges, false);
    expect_match("slots:9,21,10", ranges, true);
    expect_match("slots:x", ranges, false);
    /* SET: every value in the set. */
    expect_match("zone:a", set, true);
    expect_match("zone:a,c", set, true);
    expect_match("zone:a,d", set, false);
    /* Several constraints: all must hold. */
    {
        char both[512];
        snprintf(both, sizeof(both),
                 "[{\"name\":\"rack\",\"type\":\"TEXT\",\"text\":{\"value\":\"r1\"}},"
                 "{\"name\":\"zone\",\"type\":\"SET\",\"set\":{\"item\":[\"a\"]}}]");
        expect_match("rack:r1,r2;zone:a", both, true);
        expect_match("rack:r1,r2;zone:b", both, false);
        expect_match("rack:r1;;zone:a;", both, true);
    }
    /* Malformed attributes never match; no constraints match anything. */
    expect_match("rack:r1", "[{\"name\":\"rack\",\"type\":\"TEXT\"}]", false);
    expect_match("rack:r1", "[{\"name\":\"rack\"}]", false);
    expect_match("rack:r1", "[{\"name\":\"rack\",\"type\":\"SET\",\"set\":7}]", false);
    expect_match("rack:r1", "{}", false);
    expect_match("", "[]", true);
    expect_match("  ", "{}", true);
    assert_true(sp__offer_constraints_match(NULL, NULL));
}

static void test_offers_constraints_decide_the_offer(void **state)
{
    json_t *o = offer(8, 100000,
                      "[{\"name\":\"rack\",\"type\":\"TEXT\",\"text\":{\"value\":"
                      "\"r9\"}}]");
    sp__offer_constraints_t *c = NULL;
    sp__offer_need_t need = need_2x1408;
    sp__offer_plan_t plan;

    (void)state;
    assert_int_equal(sp__offer_constraints_parse("rack:r1,r2", &c), SP_OK);
    need.constraints = c;
    assert_int_equal(sp__offer_plan(o, &need, 1, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_CONSTRAINTS);
    sp__offer_constraints_destroy(c);
    assert_int_equal(sp__offer_constraints_parse("rack:r9", &c), SP_OK);
    need.constraints = c;
    assert_int_equal(sp__offer_plan(o, &need, 1, 0, &plan), SP_OK);
    assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
    sp__offer_plan_clear(&plan);
    sp__offer_constraints_destroy(c);
    json_decref(o);
}

static void test_offers_bad_constraints_are_refused(void **state)
{
    static const char *const bad[] = {":r1", " : r1", "rack:r1;:x"};
    sp__offer_constraints_t *c = (sp__offer_constraints_t *)&c;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(sp__offer_constraints_parse(bad[i], &c), SP_ERR_BAD_CONF);
        assert_non_null(strstr(sp_last_error(), "offers.constraints"));
    }
    assert_true(c == (sp__offer_constraints_t *)&c);
    sp__offer_constraints_destroy(NULL);
    sp__fault_arm(SP_FAULT_ALLOC, 2);
    assert_int_equal(sp__offer_constraints_parse("a:b,c;d", &c), SP_ERR_NOMEM);
    sp__fault_arm(SP_FAULT_ALLOC, 0);
}

/* splitmix64 from a fixed seed. */
static uint64_t rnd(void)
{
    static uint64_t s = 99;
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void test_offers_random_offers_match_the_model(void **state)
{
    (void)state;
    for (int round = 0; round < 2000; round++) {
        json_t *o = parse("{\"id\":{\"value\":\"O\"},\"agent_id\":{\"value\":\"S\"},"
                          "\"resources\":[]}");
        json_t *res = json_object_get(o, "resources");
        int64_t total[2] = {0, 0}, per[2];
        static const char *const names[2] = {"cpus", "mem"};
        unsigned room = (unsigned)(rnd() % 6);
        sp__offer_need_t need;
        sp__offer_plan_t plan;

        per[0] = 1 + (int64_t)(rnd() % 4000); /* thousandths of a cpu */
        per[1] = 1000 * (1 + (int64_t)(rnd() % 3000));
        need = (sp__offer_need_t){.cpus = (double)per[0] / 1000.0, .mem = (double)per[1] / 1000.0};
        for (int k = 0; k < 2; k++) {
            int objects = (int)(rnd() % 4);
            for (int i = 0; i < objects; i++) {
                int64_t m = (int64_t)(rnd() % (uint64_t)(per[k] * 3 + 1));
                json_t *r = json_pack("{s:s, s:s, s:{s:f}, s:s, s:{s:s}}", "name", names[k], "type",
                                      "SCALAR", "scalar", "value", (double)m / 1000.0, "role",
                                      rnd() % 2 ? "*" : "r", "allocation_info", "role", "r");
                assert_non_null(r);
                json_array_append_new(res, r);
                total[k] += m;
            }
        }
        unsigned want =
            (unsigned)SP_MIN(SP_MIN(total[0] / per[0], total[1] / per[1]), (int64_t)room);
        assert_int_equal(sp__offer_plan(o, &need, room, 0, &plan), SP_OK);
        if (room == 0) {
            assert_int_equal(plan.verdict, SP_OFFER_UNNEEDED);
        } else if (want == 0) {
            assert_int_equal(plan.verdict, SP_OFFER_TOO_SMALL);
        } else {
            int64_t taken[2] = {0, 0};
            assert_int_equal(plan.verdict, SP_OFFER_LAUNCH);
            assert_int_equal(plan.executors, want);
            for (unsigned e = 0; e < want; e++)
                for (int k = 0; k < 2; k++) {
                    int64_t got = llround(
                        executor_total(json_array_get(plan.resources, e), names[k]) * 1000.0);
                    assert_int_equal(got, per[k]);
                    taken[k] += got;
                }
            assert_true(taken[0] <= total[0] && taken[1] <= total[1]);
        }
        sp__offer_plan_clear(&plan);
        json_decref(o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offers_one_executor_fits),
        cmocka_unit_test(test_offers_several_executors_per_offer),
        cmocka_unit_test(test_offers_too_small_unneeded_failed_agent),
        cmocka_unit_test(test_offers_malformed_offers_are_refused),
        cmocka_unit_test(test_offers_resources_are_copies_with_new_amounts),
        cmocka_unit_test(test_offers_thousandths_add_up),
        cmocka_unit_test(test_offers_sizes_and_caps),
        cmocka_unit_test(test_offers_constraints_of_each_type),
        cmocka_unit_test(test_offers_constraints_decide_the_offer),
        cmocka_unit_test(test_offers_bad_constraints_are_refused),
        cmocka_unit_test(test_offers_random_offers_match_the_model),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
