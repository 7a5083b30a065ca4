/*
 * Hash aggregation throughput (sp_aggregator_t, include/spate/shuffle.h), a
 * word count: N = 8M records, each a word drawn uniformly from a vocabulary of
 * D distinct words (3 to 12 lowercase letters) with an 8-byte count of 1,
 * combined by sum. D = 10k (the table fits the caches), 1M and 4M (it does
 * not: each record costs cache misses). Next to it, in the same process, the
 * memory-bound limit the aggregation is read against: one random 64-byte
 * cache-line read per record from a 1 GiB buffer (independent reads, so the
 * memory system overlaps them as it can), BM_random_line.
 *
 * Rows:
 *   BM_aggregate/insert/D  sp_aggregator_insert() per record (one lookup at a time)
 *   BM_aggregate/add/D     sp__aggregator_add() per record, the staged path the
 *                          shuffle reader and the writer's combine use (rows are
 *                          skipped when the library has no such function)
 * Each iteration creates a task and an aggregator, inserts the N records,
 * reads every key back with sp_aggregator_next() and destroys it: memory is
 * ample (memory.executor=8g), nothing spills (a spill fails the row).
 * Counters: ns_per_record (wall time / N) and vs_line: ns_per_record over the
 * random-line ns per record measured at startup (median of 5); 1.0 would be
 * one cache miss's throughput per record.
 */
#include <spate/memory.h>
#include <spate/shuffle.h>

#include <benchmark/benchmark.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

/* The library's staged insert (shuffle/shuffle_int.h); weak so that this file
 * also builds against a library that predates it. */
extern "C" sp_status_t sp__aggregator_add(sp_aggregator_t *agg, const void *key, size_t key_len,
                                          const void *value, size_t value_len)
    __attribute__((weak));

namespace
{

using Clock = std::chrono::steady_clock;

constexpr size_t kRecords = size_t{8} << 20;
constexpr size_t kLineBytes = size_t{1} << 30;

struct Words {
    std::vector<char> text;    /* the records' keys back to back, as in a read block */
    std::vector<uint64_t> off; /* record i's key is text[off[i] .. off[i + 1]) */
};

uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/*
 * D random words (distinct: the word id is spelled in its first letters),
 * then N draws laid out one after another, so that the input is read in
 * order as the shuffle reader reads a block and only the table is random.
 */
const Words &words_for(size_t distinct)
{
    static std::vector<std::pair<size_t, Words>> cache;
    for (auto &c : cache)
        if (c.first == distinct)
            return c.second;
    cache.emplace_back(distinct, Words{});
    Words &w = cache.back().second;
    std::vector<std::string> vocab(distinct);
    uint64_t s = 7 + distinct;

    for (size_t i = 0; i < distinct; i++) {
        size_t id = i, len = 3 + splitmix64(&s) % 10;
        std::string &word = vocab[i];
        do { /* base-26 id, then random letters up to len */
            word.push_back(static_cast<char>('a' + id % 26));
            id /= 26;
        } while (id != 0);
        word.push_back('q'); /* ends the id, so that words are distinct */
        while (word.size() < len)
            word.push_back(static_cast<char>('a' + splitmix64(&s) % 26));
    }
    w.off.reserve(kRecords + 1);
    w.off.push_back(0);
    for (size_t i = 0; i < kRecords; i++) {
        const std::string &word = vocab[splitmix64(&s) % distinct];
        w.text.insert(w.text.end(), word.begin(), word.end());
        w.off.push_back(w.text.size());
    }
    return w;
}

size_t sum_combine(void *, const void *, size_t, const void *a, size_t, const void *b, size_t,
                   void *out, size_t cap)
{
    uint64_t x, y;
    if (cap < 8)
        return 8;
    std::memcpy(&x, a, 8);
    std::memcpy(&y, b, 8);
    x += y;
    std::memcpy(out, &x, 8);
    return 8;
}

/* ---- the limit: one random cache line per record ----------------------- */

double line_ns_per_record = 0;

double measure_random_line()
{
    size_t lines = kLineBytes / 64;
    std::vector<uint64_t> buf(kLineBytes / 8, 1);
    std::vector<uint32_t> idx(kRecords);
    std::vector<double> ns;
    uint64_t s = 99, sink = 0;

    for (auto &i : idx)
        i = static_cast<uint32_t>(splitmix64(&s) % lines);
    for (int r = 0; r < 5; r++) {
        Clock::time_point t0 = Clock::now();
        for (size_t i = 0; i < kRecords; i++)
            sink += buf[static_cast<size_t>(idx[i]) * 8];
        benchmark::DoNotOptimize(sink);
        ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
                     kRecords);
    }
    std::sort(ns.begin(), ns.end());
    return ns[ns.size() / 2];
}

void BM_random_line(benchmark::State &state)
{
    for (auto _ : state)
        state.counters["ns_per_record"] = measure_random_line();
}

/* ---- the aggregator ------------------------------------------------------ */

std::string run_dir;

void BM_aggregate(benchmark::State &state, bool staged)
{
    const Words &w = words_for(static_cast<size_t>(state.range(0)));
    sp_conf_t *conf = nullptr;
    sp_memory_manager_t *mm = nullptr;
    sp_combiner_t comb = {sum_combine, nullptr};
    const uint64_t one = 1;
    double total_ns = 0;

    if (staged && sp__aggregator_add == nullptr) {
        state.SkipWithError("this library has no sp__aggregator_add");
        return;
    }
    if (sp_conf_create(&conf) != SP_OK || sp_conf_set(conf, "memory.executor", "8g") != SP_OK ||
        sp_conf_set(conf, "memory.reserved", "0") != SP_OK ||
        sp_conf_set(conf, "memory.fraction", "1") != SP_OK ||
        sp_conf_set(conf, "shuffle.local_dirs", run_dir.c_str()) != SP_OK ||
        sp_memory_manager_create(conf, nullptr, 0, &mm) != SP_OK) {
        state.SkipWithError((std::string("setup: ") + sp_last_error()).c_str());
        sp_conf_destroy(conf);
        return;
    }
    for (auto _ : state) {
        sp_task_memory_t *task = nullptr;
        sp_aggregator_t *agg = nullptr;
        sp_aggregator_stats_t st;
        size_t keys = 0;
        bool ok = true;

        if (sp_task_memory_create(mm, 1, &task) != SP_OK ||
            sp_aggregator_create(task, conf, &comb, &agg) != SP_OK) {
            state.SkipWithError((std::string("create: ") + sp_last_error()).c_str());
            break;
        }
        Clock::time_point t0 = Clock::now();
        for (size_t i = 0; i < kRecords && ok; i++) {
            const char *k = w.text.data() + w.off[i];
            size_t kl = w.off[i + 1] - w.off[i];
            ok = (staged ? sp__aggregator_add(agg, k, kl, &one, 8)
                         : sp_aggregator_insert(agg, k, kl, &one, 8)) == SP_OK;
        }
        for (bool more = ok; more;) {
            const void *k, *v;
            size_t kl, vl;
            ok = sp_aggregator_next(agg, &k, &kl, &v, &vl, &more) == SP_OK;
            more = more && ok;
            keys += more;
        }
        total_ns += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
        sp_aggregator_stats(agg, &st);
        sp_aggregator_destroy(agg);
        sp_task_memory_destroy(task, nullptr);
        if (!ok || st.spills != 0 || st.inserted != kRecords) {
            state.SkipWithError(ok ? "the aggregator spilled" : sp_last_error());
            break;
        }
        benchmark::DoNotOptimize(keys);
    }
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    if (state.iterations() > 0) {
        double ns = total_ns / static_cast<double>(state.iterations()) / kRecords;
        state.counters["ns_per_record"] = ns;
        if (line_ns_per_record > 0)
            state.counters["vs_line"] = ns / line_ns_per_record;
        state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(kRecords));
    }
}

} // namespace

BENCHMARK(BM_random_line)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_aggregate, insert, false)
    ->Arg(10000)
    ->Arg(1 << 20)
    ->Arg(4 << 20)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_aggregate, add, true)
    ->Arg(10000)
    ->Arg(1 << 20)
    ->Arg(4 << 20)
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

int main(int argc, char **argv)
{
    char tmpl[] = "/tmp/spate-bench-aggregate-XXXXXX";

    if (mkdtemp(tmpl) == nullptr) {
        std::perror("mkdtemp");
        return 1;
    }
    run_dir = tmpl;
    sp_log_set_level(SP_LOG_ERROR);
    line_ns_per_record = measure_random_line();
    std::printf("random 64-byte line read: %.2f ns per record (median of 5)\n", line_ns_per_record);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    rmdir(run_dir.c_str());
    return 0;
}
