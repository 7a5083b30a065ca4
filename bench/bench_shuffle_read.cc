/*
 * Reduce-side read throughput of the shuffle reader (include/spate/shuffle.h),
 * next to memcpy of the same bytes measured in the same process, so that the
 * ratio, not the absolute number, is what to read:
 *
 *   read every record of every reduce partition   vs  memcpy of the record bytes
 *
 * The shuffle is written once, before the first row that needs it, and not
 * timed: M = 4 map tasks of 256 MiB each (1 GiB in all) of 100-byte records,
 * a 10-byte key and a 90-byte value of random bytes, over 1000 partitions
 * with the HASH partitioner (so that equal keys meet in one partition), sort
 * path, key ordering on. Six shuffles are written as rows ask for them:
 * codec none and lz4 with random keys (almost every key distinct), codec
 * none with keys drawn from 100,000 distinct keys (so that aggregation
 * combines), and codec none with random keys and key ordering off (the input
 * of the sorted read, which re-sorts unsorted blocks), and for the two wide
 * rows the same 1 GiB of random keys as M = 128 maps over 64 partitions
 * (TeraSort's shape: 128 blocks of about 128 KiB a partition), key-ordered
 * for the wide merge and unordered for the wide sort, which gathers each
 * partition into execution memory and radix-sorts it once (the alternative
 * to merging). Random values do not
 * compress: the lz4 rows measure the codec's cost on incompressible data.
 *
 * Each iteration is one reduce stage on one core: for every partition a
 * fresh task memory and reader (which opens its own local fetcher, as a
 * reduce task does) over the block list of that partition (built once,
 * before timing, as the driver would), every record taken, the reader
 * closed; the parts=1000 rows instead read all partitions through one reader
 * over [0, 1000), which shows what the per-task opening costs. Every key and
 * value byte is folded into a sink. Orders: unordered, merge (k-way merge of
 * the four key-sorted blocks of a partition), aggregate (hash aggregation
 * with a combiner that keeps the larger value, 90 bytes), sort (external
 * sort of the unsorted blocks). Memory is ample: memory.executor=4g,
 * memory.reserved=0, memory.fraction=1; a spill fails the row. The files
 * are in a directory made under /tmp for the run, and were just written:
 * blocks come from the page cache, mapped in place.
 *
 * Rows use wall-clock time. bytes/s and items/s count the shuffle's record
 * bytes (key + value) and records, read in every order (an aggregated read
 * returns fewer records than it reads). Counters: out_records (records
 * returned per iteration), blocks, wait_s (the readers' wait_ns), and
 * vs_memcpy: the row's bytes/s over the memcpy bandwidth measured once at
 * startup (1 GiB, best of 3). A summary printed after the run gives each
 * row's median bytes/s over that startup figure and over the median
 * BM_memcpy row, when that row ran too.
 */
#include <spate/memory.h>
#include <spate/shuffle.h>

#include <benchmark/benchmark.h>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace
{

constexpr size_t kKeyBytes = 10;
constexpr size_t kValueBytes = 90;
constexpr size_t kRecordBytes = kKeyBytes + kValueBytes;
constexpr uint32_t kPartitions = 1000;
constexpr uint32_t kMaps = 4;
constexpr uint32_t kWideMaps = 128;      /* maps arg of the wide-merge row */
constexpr uint32_t kWidePartitions = 64; /* its partitions */
constexpr int64_t kShuffleMiB = 1024;    /* all maps together */
constexpr size_t kMapRecords = (size_t{kShuffleMiB} << 20) / kMaps / kRecordBytes; /* 2,684,354 */
constexpr size_t kRecords = kMapRecords * kMaps;
constexpr size_t kCopyBytes = size_t{1} << 30; /* the memcpy baseline */
constexpr int64_t kRandomKeys = 0;             /* keys arg: random 10-byte keys */
constexpr int64_t kFewKeys = 100000;           /* keys arg: drawn from this many */

using Clock = std::chrono::steady_clock;

std::string spate_error(const char *what, sp_status_t st)
{
    return std::string(what) + ": " + sp_status_str(st) + ": " + sp_last_error();
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string out_root; /* the run's directory under /tmp */
sp_conf_t *conf = nullptr;
sp_memory_manager_t *mm = nullptr;
double startup_memcpy_bps = 0;
unsigned char *copy_src = nullptr, *copy_dst = nullptr;
uint64_t next_task_id = 1;

/* Best of three copies of 1 GiB, after one warm-up copy. */
double measure_memcpy_bps()
{
    double best = 0;

    std::memcpy(copy_dst, copy_src, kCopyBytes);
    for (int i = 0; i < 3; i++) {
        Clock::time_point t0 = Clock::now();
        std::memcpy(copy_dst, copy_src, kCopyBytes);
        benchmark::ClobberMemory();
        best = std::max(best, static_cast<double>(kCopyBytes) / seconds(Clock::now() - t0));
    }
    return best;
}

/* ---- the combiner: the larger value (byte order) of a key ----------------- */

size_t max_combine(void *, const void *, size_t, const void *a, size_t alen, const void *b,
                   size_t blen, void *out, size_t cap)
{
    int c = std::memcmp(a, b, std::min(alen, blen));
    bool take_a = c > 0 || (c == 0 && alen >= blen);
    size_t len = take_a ? alen : blen;

    if (cap >= len)
        std::memcpy(out, take_a ? a : b, len);
    return len;
}

const sp_combiner_t max_combiner = {max_combine, nullptr};

/* ---- the shuffles, written once ------------------------------------------- */

/* A committed shuffle: its map statuses and the block list of every partition. */
struct Shuffle {
    uint32_t partitions = kPartitions;
    std::vector<sp_map_status_t *> status; /* one per map */
    std::vector<sp_block_list_t *> part;   /* partition r: [r, r+1) */
    sp_block_list_t *all = nullptr;        /* [0, partitions) */
    uint64_t distinct_keys = 0;            /* kFewKeys shuffles: keys drawn */
    std::string error;                     /* set when writing it failed */

    ~Shuffle()
    {
        for (sp_block_list_t *l : part)
            sp_block_list_destroy(l);
        sp_block_list_destroy(all);
        for (sp_map_status_t *s : status)
            sp_map_status_destroy(s);
    }
};

/* By (codec, keys, key ordering, maps); written in the row's SetUp, kept to the end. */
std::map<std::tuple<int64_t, int64_t, bool, uint32_t>, std::unique_ptr<Shuffle>> shuffles;

/* The 10-byte key of record i of a map: random, or one of kFewKeys (seen marks it). */
void make_key(int64_t keys, uint64_t *s, unsigned char *key, std::vector<bool> *seen)
{
    uint64_t r = splitmix64(s);

    if (keys == kRandomKeys) {
        uint64_t r2 = splitmix64(s);
        std::memcpy(key, &r, 8);
        std::memcpy(key + 8, &r2, 2);
        return;
    }
    uint64_t id = r % static_cast<uint64_t>(keys), h = id;
    (*seen)[id] = true;
    /* Spread the ids over the key space so that they hash and sort like random keys. */
    uint64_t a = splitmix64(&h), b = splitmix64(&h);
    std::memcpy(key, &a, 8);
    std::memcpy(key + 8, &b, 2);
}

/* Writes map m of a shuffle; SP_OK, else the status and *error_p. */
sp_status_t write_map(sp_codec_t codec, int64_t keys, bool ordered, uint32_t m, uint32_t maps,
                      uint32_t partitions, std::vector<bool> *seen, sp_map_status_t **status_p,
                      std::string *error_p)
{
    sp_task_memory_t *task = nullptr;
    sp_shuffle_writer_t *w = nullptr;
    sp_shuffle_writer_options_t o;
    sp_shuffle_write_stats_t stats;
    unsigned char rec[kRecordBytes + 8];
    uint64_t s = 1000 + m;
    sp_status_t st;

    if ((st = sp_task_memory_create(mm, next_task_id++, &task)) != SP_OK) {
        *error_p = spate_error("sp_task_memory_create", st);
        return st;
    }
    if ((st = sp_shuffle_writer_options_init(&o, conf)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_options_init", st);
        goto out_task;
    }
    /* A shuffle id per setup, so that the four shuffles' files never meet. */
    o.shuffle_id = static_cast<uint64_t>(shuffles.size());
    o.map_id = m;
    o.partitions = partitions;
    o.partitioner = SP_PARTITIONER_HASH;
    o.key_ordering = ordered;
    o.codec = codec;
    o.path = SP_WRITER_SORT;
    if ((st = sp_shuffle_writer_open(task, conf, &o, &w)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_open", st);
        goto out_task;
    }
    for (size_t i = 0; i < kRecords / maps; i++) {
        make_key(keys, &s, rec, seen);
        for (size_t at = kKeyBytes; at < kRecordBytes; at += 8) {
            uint64_t r = splitmix64(&s);
            std::memcpy(rec + at, &r, 8);
        }
        st = sp_shuffle_writer_write(w, 0, rec, kKeyBytes, rec + kKeyBytes, kValueBytes);
        if (st != SP_OK) {
            *error_p = spate_error("sp_shuffle_writer_write", st);
            goto out_writer;
        }
    }
    if ((st = sp_shuffle_writer_commit(w, status_p)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_commit", st);
        goto out_writer;
    }
    sp_shuffle_writer_stats(w, &stats);
    if (stats.spills != 0) {
        *error_p = "a map writer spilled with ample memory: raise memory.executor";
        st = SP_ERR_NOMEM;
    }
out_writer:
    sp_shuffle_writer_close(w);
out_task:
    sp_task_memory_destroy(task, nullptr);
    return st;
}

/* The shuffle of a row, writing it the first time (not timed). */
Shuffle *get_shuffle(sp_codec_t codec, int64_t keys, bool ordered, uint32_t maps)
{
    auto key = std::make_tuple(static_cast<int64_t>(codec), keys, ordered, maps);
    auto found = shuffles.find(key);
    if (found != shuffles.end())
        return found->second.get();

    auto sh = std::make_unique<Shuffle>();
    Shuffle *p = sh.get();
    std::vector<bool> seen(keys == kRandomKeys ? 0 : static_cast<size_t>(keys));
    Clock::time_point t0 = Clock::now();

    p->partitions = maps == kMaps ? kPartitions : kWidePartitions;
    p->status.assign(maps, nullptr);
    p->part.assign(p->partitions, nullptr);
    for (uint32_t m = 0; m < maps && p->error.empty(); m++)
        write_map(codec, keys, ordered, m, maps, p->partitions, &seen, &p->status[m], &p->error);
    std::vector<const sp_map_status_t *> st(p->status.begin(), p->status.end());
    for (uint32_t r = 0; r < p->partitions && p->error.empty(); r++) {
        sp_status_t s = sp_block_list_from_statuses(st.data(), maps, r, r + 1, &p->part[r]);
        if (s != SP_OK)
            p->error = spate_error("sp_block_list_from_statuses", s);
    }
    if (p->error.empty()) {
        sp_status_t s = sp_block_list_from_statuses(st.data(), maps, 0, p->partitions, &p->all);
        if (s != SP_OK)
            p->error = spate_error("sp_block_list_from_statuses", s);
    }
    p->distinct_keys = static_cast<uint64_t>(std::count(seen.begin(), seen.end(), true));
    std::fprintf(stderr,
                 "bench_shuffle_read: wrote the %s shuffle (%s keys, ordering %s, %u maps, %u "
                 "partitions) in %.1f s\n",
                 sp_codec_name(codec), keys == kRandomKeys ? "random" : "100,000",
                 ordered ? "on" : "off", maps, p->partitions, seconds(Clock::now() - t0));
    shuffles.emplace(key, std::move(sh));
    return p;
}

/* ---- reading ----------------------------------------------------------------- */

/*
 * Folds every byte of b[0..n) into sink: 8-byte loads, the last one
 * overlapping the one before when n is not a multiple of 8, so that the
 * consumer costs a few cycles a record and never a byte loop.
 */
inline uint64_t fold(uint64_t sink, const void *b, size_t n)
{
    const auto *p = static_cast<const unsigned char *>(b);
    uint64_t w;

    if (n < 8) {
        for (size_t i = 0; i < n; i++)
            sink = (sink << 1) ^ p[i];
        return sink;
    }
    for (size_t i = 0; i + 8 < n; i += 8) {
        std::memcpy(&w, p + i, 8);
        sink ^= w;
    }
    std::memcpy(&w, p + n - 8, 8);
    return sink ^ w;
}

/* What one iteration read. */
struct Tally {
    uint64_t records = 0; /* returned */
    uint64_t bytes = 0;   /* key + value bytes returned */
    uint64_t blocks = 0;
    uint64_t spills = 0;
    uint64_t wait_ns = 0;
    uint64_t sink = 0;
};

/* One reduce task over list: task memory, reader, every record, close. */
sp_status_t read_list(const sp_block_list_t *list, const sp_shuffle_reader_options_t *o, Tally *t,
                      std::string *error_p)
{
    sp_task_memory_t *task = nullptr;
    sp_shuffle_reader_t *r = nullptr;
    sp_shuffle_read_stats_t stats;
    uint64_t sink = t->sink, records = 0, bytes = 0;
    sp_status_t st;
    bool more = true;

    if ((st = sp_task_memory_create(mm, next_task_id++, &task)) != SP_OK) {
        *error_p = spate_error("sp_task_memory_create", st);
        return st;
    }
    if ((st = sp_shuffle_reader_open(task, conf, list, o, &r)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_reader_open", st);
        goto out_task;
    }
    for (;;) {
        const void *k, *v;
        size_t kl, vl;
        if ((st = sp_shuffle_reader_next(r, &k, &kl, &v, &vl, &more)) != SP_OK) {
            *error_p = spate_error("sp_shuffle_reader_next", st);
            goto out_reader;
        }
        if (!more)
            break;
        sink = fold(fold(sink, k, kl), v, vl);
        records++;
        bytes += kl + vl;
    }
    sp_shuffle_reader_stats(r, &stats);
    t->records += records;
    t->bytes += bytes;
    t->blocks += stats.blocks;
    t->spills += stats.spills;
    t->wait_ns += stats.wait_ns;
    t->sink = sink;
out_reader:
    sp_shuffle_reader_close(r);
out_task:
    sp_task_memory_destroy(task, nullptr);
    return st;
}

/*
 * What each call of a row measured itself, for the summary, which prints the
 * median over the calls (repetitions, and the short calls Google Benchmark
 * makes to size a fast row).
 */
std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>, std::vector<double>>
    reader_rows;                 /* codec, order, keys, parts, maps -> bytes/s */
std::vector<double> memcpy_rows; /* bytes/s */
uint64_t global_sink;            /* keeps the folds alive */

template <typename T> T median(std::vector<T> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* ---- baseline: memcpy of 1 GiB -------------------------------------------- */

void BM_memcpy(benchmark::State &state)
{
    Clock::duration timed{};

    for (auto _ : state) {
        Clock::time_point t0 = Clock::now();
        std::memcpy(copy_dst, copy_src, kCopyBytes);
        benchmark::ClobberMemory();
        timed += Clock::now() - t0;
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kCopyBytes));
    if (state.iterations() > 0 && timed.count() > 0)
        memcpy_rows.push_back(static_cast<double>(kCopyBytes) *
                              static_cast<double>(state.iterations()) / seconds(timed));
}

/* ---- the reader ------------------------------------------------------------ */

const char *order_name(int64_t order)
{
    switch (order) {
    case SP_READ_UNORDERED: return "unordered";
    case SP_READ_MERGE: return "merge";
    case SP_READ_SORT: return "sort";
    case SP_READ_AGGREGATE: return "aggregate";
    default: return "?";
    }
}

/*
 * Writes the row's shuffle in SetUp (not timed) the first time a row needs
 * it; the shuffle then stays for the rest of the run.
 */
class BM_shuffle_read : public benchmark::Fixture
{
  public:
    using benchmark::Fixture::SetUp;
    using benchmark::Fixture::TearDown;

    void SetUp(benchmark::State &state) override
    {
        auto codec = static_cast<sp_codec_t>(state.range(0));
        auto order = static_cast<sp_read_order_t>(state.range(1));

        sh_ = get_shuffle(codec, state.range(2), order != SP_READ_SORT,
                          static_cast<uint32_t>(state.range(4)));
    }

    void TearDown(benchmark::State &) override { sh_ = nullptr; }

  protected:
    /* The row's shuffle, or nullptr after marking state skipped. */
    const Shuffle *shuffle(benchmark::State &state)
    {
        if (!sh_->error.empty()) {
            state.SkipWithError(sh_->error.c_str());
            return nullptr;
        }
        return sh_;
    }

  private:
    const Shuffle *sh_ = nullptr;
};

/* Args: codec, order, keys (kRandomKeys or kFewKeys), parts (partitions per reader: 1, or
 * all of them), maps (kMaps, or kWideMaps over kWidePartitions). */
BENCHMARK_DEFINE_F(BM_shuffle_read, read)(benchmark::State &state)
{
    auto codec = static_cast<sp_codec_t>(state.range(0));
    auto order = static_cast<sp_read_order_t>(state.range(1));
    int64_t keys = state.range(2), parts = state.range(3), maps = state.range(4);
    const Shuffle *sh = shuffle(state);
    sp_shuffle_reader_options_t o = {};
    Tally total;
    Clock::duration timed{};
    std::string error;

    if (sh == nullptr)
        return;
    o.order = order;
    o.combiner = order == SP_READ_AGGREGATE ? &max_combiner : nullptr;
    state.SetLabel(std::string(sp_codec_name(codec)) + ", " + order_name(order) +
                   (keys == kRandomKeys ? "" : ", 100k keys") + (parts == 1 ? "" : ", one reader") +
                   (maps == kMaps ? "" : ", " + std::to_string(maps) + " maps"));
    /* kRecords over kMaps; over kWideMaps, the 1 GiB rounded down to whole maps */
    const size_t records = kRecords / static_cast<size_t>(maps) * static_cast<size_t>(maps);
    uint64_t want = order != SP_READ_AGGREGATE ? records
                    : keys == kRandomKeys      ? records /* 80-bit keys: no repeats expected */
                                               : sh->distinct_keys;
    for (auto _ : state) {
        Tally t;
        Clock::time_point t0 = Clock::now();
        bool ok = true;

        if (parts == 1) {
            for (uint32_t r = 0; r < sh->partitions && ok; r++)
                ok = read_list(sh->part[r], &o, &t, &error) == SP_OK;
        } else {
            ok = read_list(sh->all, &o, &t, &error) == SP_OK;
        }
        timed += Clock::now() - t0;
        if (!ok) {
            state.SkipWithError(error.c_str());
            break;
        }
        if (t.records != want || t.spills != 0) {
            error = t.spills != 0 ? "spilled with ample memory: raise memory.executor"
                                  : "read " + std::to_string(t.records) + " records, expected " +
                                        std::to_string(want);
            state.SkipWithError(error.c_str());
            break;
        }
        global_sink ^= t.sink;
        total.records += t.records;
        total.blocks += t.blocks;
        total.wait_ns += t.wait_ns;
    }
    if (state.iterations() == 0 || timed.count() == 0)
        return;

    auto iters = static_cast<double>(state.iterations());
    double bytes = static_cast<double>(records * kRecordBytes);
    double bps = bytes * iters / seconds(timed);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(records * kRecordBytes));
    state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(records));
    state.counters["out_records"] = static_cast<double>(total.records) / iters;
    state.counters["blocks"] = static_cast<double>(total.blocks) / iters;
    state.counters["wait_s"] = static_cast<double>(total.wait_ns) / iters / 1e9;
    state.counters["vs_memcpy"] = startup_memcpy_bps > 0 ? bps / startup_memcpy_bps : 0;
    reader_rows[{static_cast<int64_t>(codec), static_cast<int64_t>(order), keys, parts, maps}]
        .push_back(bps);
}

void memcpy_args(benchmark::internal::Benchmark *b)
{
    b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void reader_args(benchmark::internal::Benchmark *b)
{
    const int64_t none = SP_CODEC_NONE, lz4 = SP_CODEC_LZ4;

    b->ArgNames({"codec", "order", "keys", "parts", "maps"})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    for (int64_t codec : {none, lz4}) {
        b->Args({codec, SP_READ_UNORDERED, kRandomKeys, 1, kMaps});
        b->Args({codec, SP_READ_UNORDERED, kRandomKeys, kPartitions, kMaps});
        b->Args({codec, SP_READ_MERGE, kRandomKeys, 1, kMaps});
        b->Args({codec, SP_READ_AGGREGATE, kRandomKeys, 1, kMaps});
    }
    b->Args({none, SP_READ_AGGREGATE, kFewKeys, 1, kMaps});
    b->Args({none, SP_READ_SORT, kRandomKeys, 1, kMaps});
    /* 128 blocks a partition, the fan-in of TeraSort's reduce: merged, or gathered and sorted. */
    b->Args({none, SP_READ_MERGE, kRandomKeys, 1, kWideMaps});
    b->Args({none, SP_READ_SORT, kRandomKeys, 1, kWideMaps});
}

int remove_entry(const char *path, const struct stat *, int, struct FTW *)
{
    return std::remove(path);
}

void print_summary()
{
    if (reader_rows.empty())
        return;
    std::printf("\nSummary: reader bytes/s / memcpy bytes/s (one core; memcpy at startup %.2f GB/s",
                startup_memcpy_bps / 1e9);
    if (!memcpy_rows.empty())
        std::printf(", BM_memcpy median %.2f GB/s", median(memcpy_rows) / 1e9);
    std::printf(")\n");
    std::printf("%-5s %-9s %-7s %-6s %-5s %9s %10s %12s %12s\n", "codec", "order", "keys", "parts",
                "maps", "read GB/s", "records/s", "vs startup", "vs BM_memcpy");
    for (const auto &[key, calls] : reader_rows) {
        auto [codec, order, keys, parts, maps] = key;
        double bps = median(calls);
        std::string vs_row = "-";
        if (!memcpy_rows.empty()) {
            char buf[32];
            std::snprintf(buf, sizeof(buf), "%.3f", bps / median(memcpy_rows));
            vs_row = buf;
        }
        std::printf("%-5s %-9s %-7s %-6s %-5lld %9.3f %9.2fM %12.3f %12s\n",
                    sp_codec_name(static_cast<sp_codec_t>(codec)), order_name(order),
                    keys == kRandomKeys ? "random" : "100k", parts == 1 ? "each" : "all",
                    static_cast<long long>(maps), bps / 1e9, bps / kRecordBytes / 1e6,
                    bps / startup_memcpy_bps, vs_row.c_str());
    }
}

/* The conf and executor memory manager every map and reduce task shares. */
bool make_executor(std::string *error_p)
{
    sp_status_t st;

    if ((st = sp_conf_create(&conf)) != SP_OK) {
        *error_p = spate_error("sp_conf_create", st);
        return false;
    }
    if ((st = sp_conf_set(conf, "memory.executor", "4g")) != SP_OK ||
        (st = sp_conf_set(conf, "memory.reserved", "0")) != SP_OK ||
        (st = sp_conf_set(conf, "memory.fraction", "1")) != SP_OK ||
        (st = sp_conf_set(conf, "shuffle.local_dirs", out_root.c_str())) != SP_OK) {
        *error_p = spate_error("sp_conf_set", st);
        return false;
    }
    if ((st = sp_memory_manager_create(conf, nullptr, 0, &mm)) != SP_OK) {
        *error_p = spate_error("sp_memory_manager_create", st);
        mm = nullptr;
        return false;
    }
    return true;
}

} // namespace

BENCHMARK(BM_memcpy)->Apply(memcpy_args);
BENCHMARK_REGISTER_F(BM_shuffle_read, read)->Apply(reader_args);

int main(int argc, char **argv)
{
    char dir[] = "/tmp/spate-bench-read-XXXXXX";
    std::string error;
    int rc = 0;

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    if (mkdtemp(dir) == nullptr) {
        std::perror("bench_shuffle_read: mkdtemp");
        return 1;
    }
    out_root = dir;
    copy_src = static_cast<unsigned char *>(std::malloc(kCopyBytes));
    copy_dst = static_cast<unsigned char *>(std::malloc(kCopyBytes));
    if (copy_src == nullptr || copy_dst == nullptr) {
        std::fprintf(stderr, "bench_shuffle_read: no memory for the memcpy baseline\n");
        return 1;
    }
    std::memset(copy_src, 0x5a, kCopyBytes); /* faults every page in */
    std::memset(copy_dst, 0, kCopyBytes);
    if (!make_executor(&error)) {
        std::fprintf(stderr, "bench_shuffle_read: %s\n", error.c_str());
        rc = 1;
        goto out;
    }
    startup_memcpy_bps = measure_memcpy_bps();
    benchmark::AddCustomContext("cores", std::to_string(sysconf(_SC_NPROCESSORS_ONLN)));
    benchmark::AddCustomContext("output_dir", out_root);
    benchmark::AddCustomContext("memcpy_startup_GB/s", std::to_string(startup_memcpy_bps / 1e9));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    print_summary();
    if (global_sink == 1)
        std::printf("(sink %llu)\n", static_cast<unsigned long long>(global_sink));
out:
    shuffles.clear();
    sp_memory_manager_destroy(mm);
    sp_conf_destroy(conf);
    if (nftw(out_root.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        std::fprintf(stderr, "bench_shuffle_read: could not remove %s\n", out_root.c_str());
    std::free(copy_src);
    std::free(copy_dst);
    return rc;
}
