/*
 * Microbenchmarks of the memory layer, each next to a baseline measured in
 * the same run so that the ratio, not the absolute number, is what to read:
 *
 *   page allocation from a NUMA arena      vs  malloc (and glibc's malloc)
 *   a page through manager + task + consumer  (compare with the arena rows)
 *   execution/storage acquire and release  vs  a pthread mutex lock/unlock
 *   one map task's memory, task after task  vs  writing the same bytes to
 *     (word count's shape: a hash   memory that is already resident (the
 *     table doubled 2 -> 64 MiB,    floor: no page is faulted)
 *     96 MiB of 4 MiB record pages,
 *     a 64 MiB sort array)
 *
 * Every allocation is touched once (its first byte) so that an allocator that
 * hands out memory it never maps cannot look free. The manager's calls take
 * one mutex, so their floor is the mutex pair; the threaded rows share one
 * manager between threads (two tasks contending for its lock) and report the
 * aggregate rate over wall-clock time.
 */
#include <spate/memory.h>

#include <benchmark/benchmark.h>

#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

#ifdef __GLIBC__
/* glibc's own allocator, reachable even though jemalloc provides malloc here. */
extern "C" void *__libc_malloc(size_t size);
extern "C" void __libc_free(void *ptr);
#endif

namespace
{

constexpr uint64_t kChunk = 64 << 10; /* bytes per acquire/release */

struct SizeArg {
    size_t bytes;
    const char *name;
};

constexpr SizeArg kSizes[] = {
    {4 << 10, "4KiB"}, {64 << 10, "64KiB"}, {1 << 20, "1MiB"}, {2 << 20, "2MiB"}, {4 << 20, "4MiB"},
};

std::string spate_error(const char *what, sp_status_t st)
{
    return std::string(what) + ": " + sp_status_str(st) + ": " + sp_last_error();
}

/* This machine's topology, loaded once; nullptr (and *error_p) when it fails. */
const sp_topology_t *machine_topology(std::string *error_p)
{
    static std::string error;
    static sp_topology_t *topo = [] {
        sp_topology_t *t = nullptr;
        sp_status_t st = sp_topology_create(nullptr, &t);
        if (st != SP_OK) {
            error = spate_error("sp_topology_create", st);
            return static_cast<sp_topology_t *>(nullptr);
        }
        return t;
    }();
    if (topo == nullptr && error_p != nullptr)
        *error_p = error;
    return topo;
}

/* Writes the first byte so the allocation is really mapped and not elided. */
inline void touch(void *ptr)
{
    *static_cast<volatile char *>(ptr) = 1;
    benchmark::DoNotOptimize(ptr);
}

/* An arena on NUMA node 0 of this machine, or nullptr with the benchmark skipped. */
sp_arena_t *machine_arena(benchmark::State &state, bool huge_pages)
{
    std::string error;
    const sp_topology_t *topo = machine_topology(&error);
    sp_arena_t *arena = nullptr;
    sp_status_t st;

    if (topo == nullptr) {
        state.SkipWithError(error.c_str());
        return nullptr;
    }
    st = sp_arena_create(topo, 0, true, huge_pages, &arena);
    if (st != SP_OK) {
        state.SkipWithError(spate_error("sp_arena_create", st).c_str());
        return nullptr;
    }
    return arena;
}

void set_rates(benchmark::State &state, size_t bytes)
{
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}

/* A conf with memory.executor=1g, memory.reserved=0 and the given page size. */
sp_status_t create_manager(const char *page_size, sp_memory_manager_t **mm_p, std::string *error_p)
{
    const sp_topology_t *topo = machine_topology(error_p);
    sp_conf_t *conf = nullptr;
    sp_status_t st;

    if (topo == nullptr)
        return SP_ERR_INTERNAL;
    st = sp_conf_create(&conf);
    if (st != SP_OK) {
        *error_p = spate_error("sp_conf_create", st);
        return st;
    }
    if ((st = sp_conf_set(conf, "memory.executor", "1g")) != SP_OK ||
        (st = sp_conf_set(conf, "memory.reserved", "0")) != SP_OK ||
        (st = sp_conf_set(conf, "memory.page_size", page_size)) != SP_OK) {
        *error_p = spate_error("sp_conf_set", st);
    } else if ((st = sp_memory_manager_create(conf, topo, 0, mm_p)) != SP_OK) {
        *error_p = spate_error("sp_memory_manager_create", st);
    }
    sp_conf_destroy(conf);
    return st;
}

/* ---- 1. pages straight from a NUMA arena, against malloc ---------------- */

void arena_alloc_free(benchmark::State &state, size_t bytes, bool huge_pages)
{
    sp_arena_t *arena = machine_arena(state, huge_pages);

    if (arena == nullptr)
        return;
    for (auto _ : state) {
        void *ptr = sp_arena_alloc(arena, bytes);
        if (ptr == nullptr) {
            state.SkipWithError("sp_arena_alloc returned NULL");
            break;
        }
        touch(ptr);
        sp_arena_free(arena, ptr, bytes);
    }
    set_rates(state, bytes);
    sp_arena_destroy(arena);
}

void malloc_free(benchmark::State &state, size_t bytes)
{
    for (auto _ : state) {
        void *ptr = std::malloc(bytes);
        if (ptr == nullptr) {
            state.SkipWithError("malloc returned NULL");
            break;
        }
        touch(ptr);
        std::free(ptr);
    }
    set_rates(state, bytes);
}

#ifdef __GLIBC__
void glibc_malloc_free(benchmark::State &state, size_t bytes)
{
    for (auto _ : state) {
        void *ptr = __libc_malloc(bytes);
        if (ptr == nullptr) {
            state.SkipWithError("__libc_malloc returned NULL");
            break;
        }
        touch(ptr);
        __libc_free(ptr);
    }
    set_rates(state, bytes);
}
#endif

/* ---- 2. pages through manager + task memory + consumer ------------------- */

const sp_memory_consumer_ops_t kNoSpillOps = {sizeof(sp_memory_consumer_ops_t), nullptr};

void page_alloc_free(benchmark::State &state, size_t bytes)
{
    std::string error;
    sp_memory_manager_t *mm = nullptr;
    sp_task_memory_t *task = nullptr;
    sp_memory_consumer_t consumer;
    sp_status_t st;

    if (create_manager(std::to_string(bytes).c_str(), &mm, &error) != SP_OK) {
        state.SkipWithError(error.c_str());
        return;
    }
    st = sp_task_memory_create(mm, 1, &task);
    if (st != SP_OK) {
        state.SkipWithError(spate_error("sp_task_memory_create", st).c_str());
        sp_memory_manager_destroy(mm);
        return;
    }
    sp_memory_consumer_init(&consumer, task, &kNoSpillOps, "bench");
    for (auto _ : state) {
        sp_page_t *page = nullptr;
        st = sp_memory_consumer_page_alloc(&consumer, 0, &page);
        if (st != SP_OK) {
            state.SkipWithError(spate_error("sp_memory_consumer_page_alloc", st).c_str());
            break;
        }
        touch(page->data);
        sp_memory_consumer_page_free(&consumer, page);
    }
    set_rates(state, bytes);
    sp_memory_consumer_fini(&consumer);
    sp_task_memory_destroy(task, nullptr);
    sp_memory_manager_destroy(mm);
}

/* Registers fn once per size in [min_bytes, max_bytes] as "<base>/<size>". */
template <typename Fn, typename... Extra>
int register_sizes(const char *base, size_t min_bytes, size_t max_bytes, Fn fn, Extra... extra)
{
    for (const SizeArg &size : kSizes) {
        if (size.bytes < min_bytes || size.bytes > max_bytes)
            continue;
        std::string name = std::string(base) + "/" + size.name;
        benchmark::RegisterBenchmark(name.c_str(), fn, size.bytes, extra...)
            ->Unit(benchmark::kNanosecond);
    }
    return 0;
}

/* Registered here, before the fixtures below, so the output keeps this order. */
constexpr size_t kAll = SIZE_MAX;
[[maybe_unused]] const int registered_sizes = [] {
    register_sizes("BM_arena_alloc_free", 0, kAll, arena_alloc_free, false);
    register_sizes("BM_malloc_free", 0, kAll, malloc_free);
#ifdef __GLIBC__
    register_sizes("BM_glibc_malloc_free", 0, kAll, glibc_malloc_free);
#endif
    register_sizes("BM_arena_alloc_free_huge", 2 << 20, kAll, arena_alloc_free, true);
    register_sizes("BM_page_alloc_free", 0, kAll, page_alloc_free);
    return 0;
}();

/* ---- 5. one map task's memory, task after task --------------------------- */

/*
 * The shape of a word count map task (4M distinct words): a hash table that
 * doubles from 2 to 64 MiB, each new table zeroed and the old one freed; 24
 * record pages of 4 MiB written through; a 64 MiB pointer array for the
 * sort. Every byte is written once, as the task writes it. With the arena's
 * page pool a task after the first writes into pages the previous one left
 * resident; without it (the base build) the pages it gets may be fresh.
 */
constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kTaskPages = 24;
constexpr size_t kTaskBytes = (126 + 4 * kTaskPages + 64) * kMiB; /* written per task */

void task_memory_shape(benchmark::State &state, bool huge_pages)
{
    sp_arena_t *arena = machine_arena(state, huge_pages);

    if (arena == nullptr)
        return;
    for (auto _ : state) {
        void *table = nullptr, *pages[kTaskPages], *array;
        size_t table_bytes = 0;
        bool ok = true;

        for (size_t t = 2 * kMiB; t <= 64 * kMiB && ok; t *= 2) {
            void *bigger = sp_arena_alloc(arena, t);
            ok = bigger != nullptr;
            if (ok) {
                std::memset(bigger, 0, t);
                sp_arena_free(arena, table, table_bytes);
                table = bigger;
                table_bytes = t;
            }
        }
        for (size_t i = 0; i < kTaskPages; i++) {
            pages[i] = ok ? sp_arena_alloc(arena, 4 * kMiB) : nullptr;
            ok = ok && pages[i] != nullptr;
            if (ok)
                std::memset(pages[i], int(i), 4 * kMiB);
        }
        array = ok ? sp_arena_alloc(arena, 64 * kMiB) : nullptr;
        ok = ok && array != nullptr;
        if (ok)
            std::memset(array, 7, 64 * kMiB);
        benchmark::ClobberMemory();
        sp_arena_free(arena, array, 64 * kMiB);
        for (size_t i = 0; i < kTaskPages; i++)
            sp_arena_free(arena, pages[i], 4 * kMiB);
        sp_arena_free(arena, table, table_bytes);
        if (!ok) {
            state.SkipWithError("sp_arena_alloc returned NULL");
            break;
        }
    }
    set_rates(state, kTaskBytes);
    sp_arena_destroy(arena);
}

/*
 * The floor: the same bytes written into one buffer made resident (and
 * madvised for huge pages, as the arena's big ranges are) before the loop.
 */
void task_memory_warm_baseline(benchmark::State &state)
{
    void *map =
        mmap(nullptr, kTaskBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *buf = static_cast<char *>(map);

    if (map == MAP_FAILED) {
        state.SkipWithError("mmap failed");
        return;
    }
    madvise(buf, kTaskBytes, MADV_HUGEPAGE); /* a refusal leaves small pages: still a floor */
    std::memset(buf, 1, kTaskBytes);
    for (auto _ : state) {
        std::memset(buf, 0, kTaskBytes);
        benchmark::ClobberMemory();
    }
    set_rates(state, kTaskBytes);
    munmap(buf, kTaskBytes);
}

[[maybe_unused]] const int registered_task_shape = [] {
    benchmark::RegisterBenchmark("BM_task_memory/warm_memset", task_memory_warm_baseline)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(8);
    benchmark::RegisterBenchmark("BM_task_memory/arena", task_memory_shape, false)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(8);
    benchmark::RegisterBenchmark("BM_task_memory/arena_huge", task_memory_shape, true)
        ->Unit(benchmark::kMillisecond)
        ->Iterations(8);
    return 0;
}();

/* ---- 3 and 4. acquire/release on one manager shared by the threads ------- */

/*
 * The fixture object is shared by the benchmark's threads and SetUp/TearDown
 * run in every one of them, so the manager is created by the first thread in
 * and destroyed by the last one out. No thread is still in the timed loop
 * when another tears down: Google Benchmark holds every thread at a barrier
 * at the start and at the end of the loop.
 */
class BM_manager : public benchmark::Fixture
{
  public:
    using benchmark::Fixture::SetUp;
    using benchmark::Fixture::TearDown;

    void SetUp(benchmark::State &) override
    {
        std::lock_guard<std::mutex> guard(lock_);
        if (users_++ == 0) {
            error_.clear();
            if (create_manager("64k", &mm_, &error_) != SP_OK)
                mm_ = nullptr;
        }
    }

    void TearDown(benchmark::State &) override
    {
        std::lock_guard<std::mutex> guard(lock_);
        if (--users_ == 0) {
            sp_memory_manager_destroy(mm_);
            mm_ = nullptr;
        }
    }

  protected:
    /* The shared manager, or nullptr after marking state skipped. */
    sp_memory_manager_t *manager(benchmark::State &state)
    {
        std::lock_guard<std::mutex> guard(lock_);
        if (mm_ == nullptr)
            state.SkipWithError(error_.c_str());
        return mm_;
    }

    /* Each thread is its own task. */
    static uint64_t task_id(const benchmark::State &state)
    {
        return static_cast<uint64_t>(state.thread_index()) + 1;
    }

  private:
    std::mutex lock_;
    int users_ = 0;
    sp_memory_manager_t *mm_ = nullptr;
    std::string error_;
};

BENCHMARK_DEFINE_F(BM_manager, execution_acquire_release)(benchmark::State &state)
{
    sp_memory_manager_t *mm = manager(state);
    uint64_t id = task_id(state);

    if (mm == nullptr)
        return;
    for (auto _ : state) {
        uint64_t granted = sp_memory_manager_acquire_execution(mm, id, kChunk);
        if (granted != kChunk) {
            state.SkipWithError("sp_memory_manager_acquire_execution granted less than asked");
            sp_memory_manager_release_execution(mm, id, granted);
            break;
        }
        sp_memory_manager_release_execution(mm, id, kChunk);
    }
    state.SetItemsProcessed(state.iterations());
}

BENCHMARK_DEFINE_F(BM_manager, consumer_acquire_release)(benchmark::State &state)
{
    sp_memory_manager_t *mm = manager(state);
    sp_task_memory_t *task = nullptr;
    sp_memory_consumer_t consumer;
    sp_status_t st;

    if (mm == nullptr)
        return;
    st = sp_task_memory_create(mm, task_id(state), &task);
    if (st != SP_OK) {
        state.SkipWithError(spate_error("sp_task_memory_create", st).c_str());
        return;
    }
    sp_memory_consumer_init(&consumer, task, &kNoSpillOps, "bench");
    for (auto _ : state) {
        uint64_t granted = sp_memory_consumer_acquire(&consumer, kChunk);
        if (granted != kChunk) {
            state.SkipWithError("sp_memory_consumer_acquire granted less than asked");
            sp_memory_consumer_release(&consumer, granted);
            break;
        }
        sp_memory_consumer_release(&consumer, kChunk);
    }
    state.SetItemsProcessed(state.iterations());
    sp_memory_consumer_fini(&consumer);
    sp_task_memory_destroy(task, nullptr);
}

BENCHMARK_DEFINE_F(BM_manager, storage_acquire_release)(benchmark::State &state)
{
    sp_memory_manager_t *mm = manager(state);

    if (mm == nullptr)
        return;
    for (auto _ : state) {
        if (!sp_memory_manager_acquire_storage(mm, kChunk)) {
            state.SkipWithError("sp_memory_manager_acquire_storage refused");
            break;
        }
        sp_memory_manager_release_storage(mm, kChunk);
    }
    state.SetItemsProcessed(state.iterations());
}

/* The floor of every manager call: one lock/unlock of a mutex nobody else takes. */
void BM_mutex_baseline(benchmark::State &state)
{
    pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;

    for (auto _ : state) {
        pthread_mutex_lock(&mutex);
        benchmark::ClobberMemory();
        pthread_mutex_unlock(&mutex);
    }
    state.SetItemsProcessed(state.iterations());
    pthread_mutex_destroy(&mutex);
}

/* The threaded floor: the same pair on one mutex that all threads take. */
pthread_mutex_t shared_mutex = PTHREAD_MUTEX_INITIALIZER;

void BM_mutex_shared(benchmark::State &state)
{
    for (auto _ : state) {
        pthread_mutex_lock(&shared_mutex);
        benchmark::ClobberMemory();
        pthread_mutex_unlock(&shared_mutex);
    }
    state.SetItemsProcessed(state.iterations());
}

} // namespace

BENCHMARK(BM_mutex_baseline)->Unit(benchmark::kNanosecond)->UseRealTime();
BENCHMARK(BM_mutex_shared)->Unit(benchmark::kNanosecond)->UseRealTime()->Threads(2);
BENCHMARK_REGISTER_F(BM_manager, execution_acquire_release)
    ->Unit(benchmark::kNanosecond)
    ->UseRealTime()
    ->Threads(1)
    ->Threads(2);
BENCHMARK_REGISTER_F(BM_manager, consumer_acquire_release)
    ->Unit(benchmark::kNanosecond)
    ->UseRealTime()
    ->Threads(1)
    ->Threads(2);
BENCHMARK_REGISTER_F(BM_manager, storage_acquire_release)
    ->Unit(benchmark::kNanosecond)
    ->UseRealTime()
    ->Threads(1)
    ->Threads(2);

namespace
{

std::string first_line(const char *path)
{
    std::ifstream in(path);
    std::string line;

    if (!std::getline(in, line))
        return "unknown";
    return line;
}

/* Library that the process's malloc comes from (jemalloc, linked by spate). */
std::string malloc_provider()
{
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");

    if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr)
        return "unknown";
    return info.dli_fname;
}

} // namespace

int main(int argc, char **argv)
{
    std::string error;
    const sp_topology_t *topo;

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    topo = machine_topology(&error);
    if (topo != nullptr) {
        benchmark::AddCustomContext("numa_nodes", std::to_string(sp_topology_numa_count(topo)));
        benchmark::AddCustomContext("cores", std::to_string(sp_topology_core_count(topo)));
    } else {
        std::fprintf(stderr, "bench_memory: %s\n", error.c_str());
    }
    benchmark::AddCustomContext("malloc", malloc_provider());
    benchmark::AddCustomContext("thp", first_line("/sys/kernel/mm/transparent_hugepage/enabled"));
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
