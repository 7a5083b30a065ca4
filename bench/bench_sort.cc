/*
 * Microbenchmarks of the map side's radix sorts (shuffle/radix_sort.h)
 * against the comparison sorts a caller would otherwise reach for, all in
 * the same run so that the ratios mean something on a noisy machine:
 *
 *   sp__radix_sort_ptrs     vs  qsort, std::sort, std::stable_sort on the partition
 *   sp__radix_sort_entries  vs  qsort, std::sort on (partition, prefix)
 *
 * Inputs are random packed pointers (page and offset random) over 1000
 * partitions, 1M and 10M of them; entries carry a random 8-byte prefix
 * (every prefix byte varies: the radix sort's worst case) or a 4-byte key
 * zero-padded (half the prefix passes skipped). The radix rows also run over
 * 1, 200 and 2^24 partitions to show how the skipped passes pay.
 *
 * Each timed iteration first copies the input from a pristine array, since
 * every sort works in place; BM_copy_baseline* measures that copy alone, to
 * be subtracted when reading a row. items/s counts elements sorted.
 */
#include "common_int.h"
#include <spate/shuffle.h>

#include "shuffle/radix_sort.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

namespace
{

constexpr int64_t kDefaultPartitions = 1000;

uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t random_ptr(uint64_t *s, uint32_t partitions)
{
    uint64_t r = splitmix64(s);
    auto partition = static_cast<uint32_t>((r >> 32) % partitions);
    auto page = static_cast<uint32_t>(r & (SP_PAGE_TABLE_SIZE - 1));
    auto offset = static_cast<uint32_t>(splitmix64(s) & SP_PAGE_MAX_OFFSET);
    return sp_shuffle_packed_ptr_encode(partition, page, offset);
}

/* Pristine inputs, built once per (n, partitions) and reused by every row. */
const std::vector<uint64_t> &pristine_ptrs(size_t n, uint32_t partitions)
{
    static std::map<std::pair<size_t, uint32_t>, std::vector<uint64_t>> cache;
    auto &v = cache[{n, partitions}];
    if (v.size() != n) {
        uint64_t s = n * 31 + partitions;
        v.resize(n);
        for (auto &p : v)
            p = random_ptr(&s, partitions);
    }
    return v;
}

enum PrefixKind : int64_t { kPrefixRandom8 = 8, kPrefixKey4 = 4 };

const std::vector<sp_sort_entry_t> &pristine_entries(size_t n, int64_t prefix_kind)
{
    static std::map<std::pair<size_t, int64_t>, std::vector<sp_sort_entry_t>> cache;
    auto &v = cache[{n, prefix_kind}];
    if (v.size() != n) {
        uint64_t s = n * 17 + static_cast<uint64_t>(prefix_kind);
        v.resize(n);
        for (auto &e : v) {
            unsigned char key[8];
            uint64_t r = splitmix64(&s);
            std::memcpy(key, &r, sizeof(key));
            e.prefix = sp__key_prefix(key, static_cast<size_t>(prefix_kind));
            e.ptr = random_ptr(&s, kDefaultPartitions);
        }
    }
    return v;
}

int ptr_cmp(const void *x, const void *y)
{
    uint32_t a = sp_shuffle_packed_ptr_partition(*static_cast<const uint64_t *>(x));
    uint32_t b = sp_shuffle_packed_ptr_partition(*static_cast<const uint64_t *>(y));
    return (a > b) - (a < b);
}

bool ptr_less(uint64_t x, uint64_t y)
{
    return sp_shuffle_packed_ptr_partition(x) < sp_shuffle_packed_ptr_partition(y);
}

bool entry_less(const sp_sort_entry_t &x, const sp_sort_entry_t &y)
{
    uint32_t a = sp_shuffle_packed_ptr_partition(x.ptr);
    uint32_t b = sp_shuffle_packed_ptr_partition(y.ptr);
    return a != b ? a < b : x.prefix < y.prefix;
}

int entry_cmp(const void *x, const void *y)
{
    const auto *a = static_cast<const sp_sort_entry_t *>(x);
    const auto *b = static_cast<const sp_sort_entry_t *>(y);
    return entry_less(*a, *b) ? -1 : entry_less(*b, *a);
}

/* Runs sort on a fresh copy of the pristine pointers each iteration. */
template <typename Sort> void run_ptrs(benchmark::State &state, Sort sort)
{
    auto n = static_cast<size_t>(state.range(0));
    auto partitions = static_cast<uint32_t>(state.range(1));
    const auto &src = pristine_ptrs(n, partitions);
    std::vector<uint64_t> a(n);
    std::vector<uint64_t> tmp(n, 0);

    for (auto _ : state) {
        std::memcpy(a.data(), src.data(), n * sizeof(uint64_t));
        uint64_t *out = sort(a.data(), tmp.data(), n);
        benchmark::DoNotOptimize(out);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}

template <typename Sort> void run_entries(benchmark::State &state, Sort sort)
{
    auto n = static_cast<size_t>(state.range(0));
    const auto &src = pristine_entries(n, state.range(1));
    std::vector<sp_sort_entry_t> a(n);
    std::vector<sp_sort_entry_t> tmp(n, sp_sort_entry_t{0, 0});

    for (auto _ : state) {
        std::memcpy(a.data(), src.data(), n * sizeof(sp_sort_entry_t));
        sp_sort_entry_t *out = sort(a.data(), tmp.data(), n);
        benchmark::DoNotOptimize(out);
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}

void BM_copy_baseline(benchmark::State &state)
{
    run_ptrs(state, [](uint64_t *a, uint64_t *, size_t) { return a; });
}

void BM_radix_sort_ptrs(benchmark::State &state) { run_ptrs(state, sp__radix_sort_ptrs); }

void BM_qsort_ptrs(benchmark::State &state)
{
    run_ptrs(state, [](uint64_t *a, uint64_t *, size_t n) {
        std::qsort(a, n, sizeof(uint64_t), ptr_cmp);
        return a;
    });
}

void BM_std_sort_ptrs(benchmark::State &state)
{
    run_ptrs(state, [](uint64_t *a, uint64_t *, size_t n) {
        std::sort(a, a + n, ptr_less);
        return a;
    });
}

void BM_std_stable_sort_ptrs(benchmark::State &state)
{
    run_ptrs(state, [](uint64_t *a, uint64_t *, size_t n) {
        std::stable_sort(a, a + n, ptr_less);
        return a;
    });
}

void BM_copy_baseline_entries(benchmark::State &state)
{
    run_entries(state, [](sp_sort_entry_t *a, sp_sort_entry_t *, size_t) { return a; });
}

void BM_radix_sort_entries(benchmark::State &state) { run_entries(state, sp__radix_sort_entries); }

void BM_qsort_entries(benchmark::State &state)
{
    run_entries(state, [](sp_sort_entry_t *a, sp_sort_entry_t *, size_t n) {
        std::qsort(a, n, sizeof(sp_sort_entry_t), entry_cmp);
        return a;
    });
}

void BM_std_sort_entries(benchmark::State &state)
{
    run_entries(state, [](sp_sort_entry_t *a, sp_sort_entry_t *, size_t n) {
        std::sort(a, a + n, entry_less);
        return a;
    });
}

void ptr_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"n", "partitions"})->Unit(benchmark::kMillisecond);
    for (int64_t n : {1000000, 10000000})
        b->Args({n, kDefaultPartitions});
}

void radix_ptr_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"n", "partitions"})->Unit(benchmark::kMillisecond);
    for (int64_t n : {1000000, 10000000})
        for (int64_t partitions :
             {int64_t{1}, int64_t{200}, kDefaultPartitions, int64_t{SP_MAX_PARTITIONS}})
            b->Args({n, partitions});
}

void entry_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"n", "prefix_bytes"})->Unit(benchmark::kMillisecond);
    for (int64_t n : {1000000, 10000000})
        for (int64_t kind : {kPrefixRandom8, kPrefixKey4})
            b->Args({n, kind});
}

} // namespace

BENCHMARK(BM_copy_baseline)->Apply(ptr_args);
BENCHMARK(BM_radix_sort_ptrs)->Apply(radix_ptr_args);
BENCHMARK(BM_qsort_ptrs)->Apply(ptr_args);
BENCHMARK(BM_std_sort_ptrs)->Apply(ptr_args);
BENCHMARK(BM_std_stable_sort_ptrs)->Apply(ptr_args);
BENCHMARK(BM_copy_baseline_entries)->Apply(entry_args);
BENCHMARK(BM_radix_sort_entries)->Apply(entry_args);
BENCHMARK(BM_qsort_entries)->Apply(entry_args);
BENCHMARK(BM_std_sort_entries)->Apply(entry_args);

BENCHMARK_MAIN();
