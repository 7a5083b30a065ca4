/*
 * Map-side write throughput of the shuffle writer (include/spate/shuffle.h),
 * next to memcpy of the same bytes measured in the same process, so that the
 * ratio, not the absolute number, is what to read:
 *
 *   open + write every record + commit + close   vs  memcpy of the record bytes
 *
 * Records are 100 bytes, a 10-byte key and a 90-byte value of random bytes,
 * generated once before any benchmark runs, with a precomputed random
 * partition each over 1000 partitions (the GIVEN partitioner; 1000 is above
 * shuffle.bypass_threshold, so this is the sort path). Random bytes do not
 * compress: the lz4 rows measure the codec's cost on incompressible data.
 *
 * Each iteration makes a fresh task memory and writer, writes all records,
 * commits and closes; removing the committed files afterwards is not timed.
 * Memory is either ample (memory.executor=4g, nothing spills; a spill there
 * fails the row) or an eighth of the record bytes (the writer spills and
 * merges). Output goes to a directory made under /tmp for the run, so the
 * disk is whatever /tmp is; with a few GiB written per row it is mostly the
 * page cache.
 *
 * Rows use wall-clock time (commit writes files). bytes/s and items/s count
 * record bytes (key + value) and records. Counters: spills per iteration,
 * out_ratio (committed data file bytes / record bytes), sort_s, spill_s and
 * merge_s (the writer's sort_ns, spill_ns and merge_ns per iteration, in
 * seconds; merge_ns spans all of commit, so it includes the sort and last
 * spill done there), and vs_memcpy: the row's bytes/s over the memcpy bandwidth
 * measured once at startup (1 GiB, best of 3). A summary printed after the
 * run gives each writer row's median bytes/s over that startup figure and
 * over the median BM_memcpy row of the same size, when that row ran too.
 */
#include <spate/memory.h>
#include <spate/shuffle.h>

#include <benchmark/benchmark.h>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace
{

constexpr size_t kKeyBytes = 10;
constexpr size_t kValueBytes = 90;
constexpr size_t kRecordBytes = kKeyBytes + kValueBytes;
constexpr uint32_t kPartitions = 1000;
constexpr int64_t kMaxMiB = 1024;                                      /* largest size registered */
constexpr size_t kMaxRecords = (size_t{kMaxMiB} << 20) / kRecordBytes; /* 10,737,418 */
constexpr int64_t kAmple = 0;  /* mem arg: memory.executor=4g */
constexpr int64_t kEighth = 8; /* mem arg: memory.executor = record bytes / 8 */

using Clock = std::chrono::steady_clock;

std::string spate_error(const char *what, sp_status_t st)
{
    return std::string(what) + ": " + sp_status_str(st) + ": " + sp_last_error();
}

/* The pre-generated input: records back to back, and each one's partition. */
struct Input {
    unsigned char *records = nullptr;  /* kMaxRecords x 100 bytes */
    uint32_t *partitions = nullptr;    /* kMaxRecords */
    unsigned char *copy_dst = nullptr; /* memcpy destination, as large, pre-faulted */
};

Input input;
std::string out_root; /* the run's directory under /tmp */
double startup_memcpy_bps = 0;

uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fills every buffer once (which also faults every page in). */
bool generate_input()
{
    size_t bytes = kMaxRecords * kRecordBytes;
    uint64_t s = 42;

    input.records = static_cast<unsigned char *>(std::malloc(bytes + 8));
    input.partitions = static_cast<uint32_t *>(std::malloc(kMaxRecords * sizeof(uint32_t)));
    input.copy_dst = static_cast<unsigned char *>(std::malloc(bytes));
    if (input.records == nullptr || input.partitions == nullptr || input.copy_dst == nullptr)
        return false;
    for (size_t at = 0; at < bytes; at += 8) {
        uint64_t r = splitmix64(&s);
        std::memcpy(input.records + at, &r, 8);
    }
    for (size_t i = 0; i < kMaxRecords; i++)
        input.partitions[i] = static_cast<uint32_t>(splitmix64(&s) % kPartitions);
    std::memset(input.copy_dst, 0, bytes);
    return true;
}

size_t records_for(int64_t mib) { return (static_cast<size_t>(mib) << 20) / kRecordBytes; }

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

/* Best of three copies of the largest size, after one warm-up copy. */
double measure_memcpy_bps()
{
    size_t bytes = kMaxRecords * kRecordBytes;
    double best = 0;

    std::memcpy(input.copy_dst, input.records, bytes);
    for (int i = 0; i < 3; i++) {
        Clock::time_point t0 = Clock::now();
        std::memcpy(input.copy_dst, input.records, bytes);
        benchmark::ClobberMemory();
        double s = seconds(Clock::now() - t0);
        best = std::max(best, static_cast<double>(bytes) / s);
    }
    return best;
}

/*
 * What each call of a row measured itself, for the summary, which prints the
 * median over the calls (repetitions, and the short calls Google Benchmark
 * makes to size a fast row).
 */
struct RowResult {
    double bytes_per_second;
    double spills;
};
std::map<std::tuple<int64_t, int64_t, int64_t>, std::vector<RowResult>>
    writer_rows;                                    /* MiB, codec, mem */
std::map<int64_t, std::vector<double>> memcpy_rows; /* by MiB */

template <typename T, typename Key> T median(std::vector<T> v, Key key)
{
    std::sort(v.begin(), v.end(), [&](const T &a, const T &b) { return key(a) < key(b); });
    return v[v.size() / 2];
}

/* ---- baseline: memcpy of the same bytes ---------------------------------- */

void BM_memcpy(benchmark::State &state)
{
    size_t bytes = records_for(state.range(0)) * kRecordBytes;
    Clock::duration timed{};

    for (auto _ : state) {
        Clock::time_point t0 = Clock::now();
        std::memcpy(input.copy_dst, input.records, bytes);
        benchmark::ClobberMemory();
        timed += Clock::now() - t0;
    }
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
    if (state.iterations() > 0 && timed.count() > 0)
        memcpy_rows[state.range(0)].push_back(
            static_cast<double>(bytes) * static_cast<double>(state.iterations()) / seconds(timed));
}

/* ---- the writer ----------------------------------------------------------- */

/*
 * Builds the conf and the executor's memory manager of a row in SetUp (not
 * timed) and destroys them in TearDown; each iteration then makes its own
 * task memory and writer from them, as a map task would.
 */
class BM_shuffle_write : public benchmark::Fixture
{
  public:
    using benchmark::Fixture::SetUp;
    using benchmark::Fixture::TearDown;

    void SetUp(benchmark::State &state) override
    {
        int64_t mib = state.range(0), mem = state.range(2);
        std::string executor =
            mem == kAmple ? std::string("4g") : std::to_string((mib << 20) / mem);
        sp_status_t st;

        error_.clear();
        if ((st = sp_conf_create(&conf_)) != SP_OK) {
            error_ = spate_error("sp_conf_create", st);
            return;
        }
        /* SPATE_CONF_* variables tune a run (memory.huge_pages, shuffle.*). */
        if ((st = sp_conf_load_env(conf_, environ)) != SP_OK) {
            error_ = spate_error("sp_conf_load_env", st);
            return;
        }
        if ((st = sp_conf_set(conf_, "memory.executor", executor.c_str())) != SP_OK ||
            (st = sp_conf_set(conf_, "memory.reserved", "0")) != SP_OK ||
            (st = sp_conf_set(conf_, "memory.fraction", "1")) != SP_OK ||
            (st = sp_conf_set(conf_, "shuffle.local_dirs", out_root.c_str())) != SP_OK) {
            error_ = spate_error("sp_conf_set", st);
            return;
        }
        if ((st = sp_memory_manager_create(conf_, nullptr, 0, &mm_)) != SP_OK) {
            error_ = spate_error("sp_memory_manager_create", st);
            mm_ = nullptr;
        }
    }

    void TearDown(benchmark::State &) override
    {
        sp_memory_manager_destroy(mm_);
        mm_ = nullptr;
        sp_conf_destroy(conf_);
        conf_ = nullptr;
    }

  protected:
    /* The row's manager, or nullptr after marking state skipped. */
    sp_memory_manager_t *manager(benchmark::State &state)
    {
        if (mm_ == nullptr)
            state.SkipWithError(error_.empty() ? "no memory manager" : error_.c_str());
        return mm_;
    }

    const sp_conf_t *conf() const { return conf_; }

  private:
    sp_conf_t *conf_ = nullptr;
    sp_memory_manager_t *mm_ = nullptr;
    std::string error_;
};

/* Unlinks the three committed files of status; false (and *error_p) on failure. */
bool remove_output(const sp_map_status_t *status, std::string *error_p)
{
    for (const char *path : {status->data_path, status->index_path, status->checksum_path}) {
        if (path != nullptr && unlink(path) != 0) {
            *error_p = std::string("unlink ") + path + ": " + std::strerror(errno);
            return false;
        }
    }
    return true;
}

/*
 * One map task: a fresh task memory and writer, every record, commit, close.
 * Returns SP_OK with the status and the writer's stats, else the status and
 * *error_p.
 */
sp_status_t write_map_output(sp_memory_manager_t *mm, const sp_conf_t *conf, sp_codec_t codec,
                             uint64_t map_id, size_t n, sp_map_status_t **status_p,
                             sp_shuffle_write_stats_t *stats_p, std::string *error_p)
{
    sp_task_memory_t *task = nullptr;
    sp_shuffle_writer_t *w = nullptr;
    sp_shuffle_writer_options_t o;
    sp_status_t st;

    if ((st = sp_task_memory_create(mm, 1, &task)) != SP_OK) {
        *error_p = spate_error("sp_task_memory_create", st);
        return st;
    }
    if ((st = sp_shuffle_writer_options_init(&o, conf)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_options_init", st);
        goto out_task;
    }
    o.shuffle_id = 1;
    o.map_id = map_id;
    o.partitions = kPartitions;
    o.codec = codec;
    if ((st = sp_shuffle_writer_open(task, conf, &o, &w)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_open", st);
        goto out_task;
    }
    for (size_t i = 0; i < n; i++) {
        const unsigned char *rec = input.records + i * kRecordBytes;
        st = sp_shuffle_writer_write(w, input.partitions[i], rec, kKeyBytes, rec + kKeyBytes,
                                     kValueBytes);
        if (st != SP_OK) {
            *error_p = spate_error("sp_shuffle_writer_write", st);
            goto out_writer;
        }
    }
    if ((st = sp_shuffle_writer_commit(w, status_p)) != SP_OK) {
        *error_p = spate_error("sp_shuffle_writer_commit", st);
        goto out_writer;
    }
    sp_shuffle_writer_stats(w, stats_p);
out_writer:
    sp_shuffle_writer_close(w);
out_task:
    sp_task_memory_destroy(task, nullptr);
    return st;
}

BENCHMARK_DEFINE_F(BM_shuffle_write, sort)(benchmark::State &state)
{
    sp_memory_manager_t *mm = manager(state);
    int64_t mib = state.range(0), mem = state.range(2);
    auto codec = static_cast<sp_codec_t>(state.range(1));
    size_t n = records_for(mib);
    uint64_t map_id = 0;
    double spills = 0, out_bytes = 0, sort_ns = 0, spill_ns = 0, merge_ns = 0;
    Clock::duration timed{};
    std::string error;

    if (mm == nullptr)
        return;
    state.SetLabel(std::string(sp_codec_name(codec)) + (mem == kAmple ? ", ample" : ", 1/8 mem"));
    for (auto _ : state) {
        sp_map_status_t *status = nullptr;
        sp_shuffle_write_stats_t stats;
        Clock::time_point t0 = Clock::now();

        if (write_map_output(mm, conf(), codec, map_id++, n, &status, &stats, &error) != SP_OK) {
            state.SkipWithError(error.c_str());
            break;
        }
        timed += Clock::now() - t0;
        state.PauseTiming();
        bool removed = remove_output(status, &error);
        sp_map_status_destroy(status);
        if (!removed || stats.records != n || (mem == kAmple && stats.spills != 0)) {
            if (removed)
                error = stats.records != n ? "the writer counted the wrong number of records"
                                           : "spilled with ample memory: raise memory.executor";
            state.SkipWithError(error.c_str());
            break;
        }
        spills += static_cast<double>(stats.spills);
        out_bytes += static_cast<double>(stats.output_bytes);
        sort_ns += static_cast<double>(stats.sort_ns);
        spill_ns += static_cast<double>(stats.spill_ns);
        merge_ns += static_cast<double>(stats.merge_ns);
        state.ResumeTiming();
    }
    if (state.iterations() == 0 || timed.count() == 0)
        return;

    auto iters = static_cast<double>(state.iterations());
    double bytes = static_cast<double>(n * kRecordBytes);
    double bps = bytes * iters / seconds(timed);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n * kRecordBytes));
    state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
    state.counters["spills"] = spills / iters;
    state.counters["out_ratio"] = out_bytes / iters / bytes;
    state.counters["sort_s"] = sort_ns / iters / 1e9;
    state.counters["spill_s"] = spill_ns / iters / 1e9;
    state.counters["merge_s"] = merge_ns / iters / 1e9;
    state.counters["vs_memcpy"] = startup_memcpy_bps > 0 ? bps / startup_memcpy_bps : 0;
    writer_rows[{mib, static_cast<int64_t>(codec), mem}].push_back(RowResult{bps, spills / iters});
}

void size_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"MiB"})->Unit(benchmark::kMillisecond)->UseRealTime();
    for (int64_t mib : {int64_t{256}, kMaxMiB})
        b->Args({mib});
}

void writer_args(benchmark::internal::Benchmark *b)
{
    b->ArgNames({"MiB", "codec", "mem"})->Unit(benchmark::kMillisecond)->UseRealTime();
    for (int64_t mib : {int64_t{256}, kMaxMiB})
        for (int64_t mem : {kAmple, kEighth})
            for (int64_t codec : {int64_t{SP_CODEC_NONE}, int64_t{SP_CODEC_LZ4}})
                b->Args({mib, codec, mem});
}

int remove_entry(const char *path, const struct stat *, int, struct FTW *)
{
    return std::remove(path);
}

void print_summary()
{
    if (writer_rows.empty())
        return;
    std::printf(
        "\nSummary: writer bytes/s / memcpy bytes/s (one core; memcpy at startup %.2f GB/s)\n",
        startup_memcpy_bps / 1e9);
    std::printf("%6s %-5s %-8s %10s %7s %12s %12s\n", "MiB", "codec", "memory", "write GB/s",
                "spills", "vs startup", "vs BM_memcpy");
    for (const auto &[key, calls] : writer_rows) {
        auto [mib, codec, mem] = key;
        RowResult row = median(calls, [](const RowResult &r) { return r.bytes_per_second; });
        auto same_size = memcpy_rows.find(mib);
        std::string vs_row = "-";
        if (same_size != memcpy_rows.end()) {
            char buf[32];
            double copy_bps = median(same_size->second, [](double v) { return v; });
            std::snprintf(buf, sizeof(buf), "%.3f", row.bytes_per_second / copy_bps);
            vs_row = buf;
        }
        std::printf("%6lld %-5s %-8s %10.3f %7.1f %12.3f %12s\n", static_cast<long long>(mib),
                    sp_codec_name(static_cast<sp_codec_t>(codec)), mem == kAmple ? "ample" : "1/8",
                    row.bytes_per_second / 1e9, row.spills,
                    row.bytes_per_second / startup_memcpy_bps, vs_row.c_str());
    }
}

} // namespace

BENCHMARK(BM_memcpy)->Apply(size_args);
BENCHMARK_REGISTER_F(BM_shuffle_write, sort)->Apply(writer_args);

int main(int argc, char **argv)
{
    char dir[] = "/tmp/spate-bench-write-XXXXXX";

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    if (mkdtemp(dir) == nullptr) {
        std::perror("bench_shuffle_write: mkdtemp");
        return 1;
    }
    out_root = dir;
    if (!generate_input()) {
        std::fprintf(stderr, "bench_shuffle_write: no memory for %zu records\n", kMaxRecords);
        return 1;
    }
    startup_memcpy_bps = measure_memcpy_bps();
    benchmark::AddCustomContext("cores", std::to_string(sysconf(_SC_NPROCESSORS_ONLN)));
    benchmark::AddCustomContext("output_dir", out_root);
    benchmark::AddCustomContext("memcpy_startup_GB/s", std::to_string(startup_memcpy_bps / 1e9));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    print_summary();
    if (nftw(out_root.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        std::fprintf(stderr, "bench_shuffle_write: could not remove %s\n", out_root.c_str());
    std::free(input.records);
    std::free(input.partitions);
    std::free(input.copy_dst);
    return 0;
}
