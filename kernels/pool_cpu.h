// pool_cpu.h: the threads of the cpu backend's kernels (kernels/*_cpu.cpp), one pool for all of them, and what its
// worker does while the caller is away: read ahead the start of its share of the matrix the next product will stream.
//
// Why not OpenMP: a decode step calls ~60 kernels, and between two of them Python runs for 5-30 us (the wrappers,
// norms, RoPE, the cache write: one thread's work). OpenMP's workers spend those gaps spinning while the memory bus
// sits idle. Here an idle worker uses them: each product names the matrix the next one will read (`read_ahead`), and
// the worker prefetches the first READ_AHEAD_BYTES of its own share of it, 16 cache lines at a time, looking for a
// job between two batches. Its next share then starts from its caches instead of from memory, and it moves on to
// the shared tail of the panels sooner. Measured, decode steps alternating in one process (`make bench`'s shapes):
// 2.5-3.5% less time for GPT-2 and 3.5-4.3% for the Llama shape, at both of the machine's bandwidth levels (~35 and
// ~57 GB/s). Prefetching the caller's share too (into the worker's cache) made steps 3% slower at ~57 GB/s, and
// without reading ahead again after each job (attention's keys push the lines out) GPT-2 gained nothing. (Those
// figures predate the replay of decode steps from C, nanollm/replayed_step.py, which leaves no Python between two
// kernels: the gaps left are the one-thread kernels between two products, norms and the cache's writes.)
//
// The pool: the caller is thread 0 and each other core gets a worker (the cores this process may use, or
// OMP_NUM_THREADS, as OpenMP read it). A job is published by bumping `generation_`; the caller does its own share,
// then waits for the workers' count to reach zero. An idle worker spins (and reads ahead) for SPIN_SECONDS after its
// last job, then sleeps on a condition variable, so a loaded model that is not computing costs no CPU. A forked
// child has none of its parent's threads: it makes a pool of its own at its first job. Two Python threads calling
// kernels at once: the second runs its kernel on its own thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <pthread.h>
#include <sched.h>
#include <thread>

constexpr double SPIN_SECONDS = 0.002;           // an idle worker's spin before it sleeps (a step's gaps are us)
constexpr long long READ_AHEAD_BYTES = 1 << 21;  // of the worker's share: its L2 and some of L3 (1 and 4 MiB: less)
constexpr long long LINE = 64;                   // bytes in a cache line

static inline void cpu_relax() {  // tell the core this thread is spinning (the other hyperthread gets the cycles)
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// The first and last item of thread t's share when n items are split in `threads` contiguous, near-equal parts.
static inline void share_of(long long n, int t, int threads, long long& begin, long long& end) {
    begin = n * t / threads;
    end = n * (t + 1) / threads;
}

class Pool {
  public:
    // body(thread, threads) on every thread of the pool, the caller included; `parallel` false: the caller alone.
    template <class Body> void run(bool parallel, Body&& body) {
        std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);  // another Python thread's kernel has the
        if (!parallel || threads_ == 1 || !busy.owns_lock()) {             // pool: this one runs on its caller alone
            body(0, 1);
            return;
        }
        job_ = [](void* ctx, int thread, int threads) { (*static_cast<Body*>(ctx))(thread, threads); };
        ctx_ = &body;
        running_.store(threads_ - 1, std::memory_order_relaxed);
        generation_.fetch_add(1);  // publishes job_, ctx_ and running_ (and is seen before sleepers_ is read)
        if (sleepers_.load() > 0) {
            std::lock_guard<std::mutex> lock(mutex_);
            wake_.notify_all();
        }
        body(0, threads_);
        while (running_.load(std::memory_order_acquire) > 0) cpu_relax();
    }

    // Ask idle workers to prefetch the first READ_AHEAD_BYTES of their own shares of `items` items of `item_bytes`
    // each at `start`, shared as the next job will share them (share_of).
    void read_ahead(const void* start, long long items, long long item_bytes) {
        ahead_start_.store(static_cast<const char*>(start), std::memory_order_relaxed);
        ahead_items_.store(items, std::memory_order_relaxed);
        ahead_item_bytes_.store(item_bytes, std::memory_order_relaxed);
        ahead_.fetch_add(1, std::memory_order_release);
    }

    // The process's pool, made at first use, and again in a forked child: its parent's threads are gone, so the
    // child forgets the pool as it starts (pthread_atfork) and makes its own. Never destroyed: its workers are
    // detached and end with the process.
    static Pool& get() {
        Pool* pool = current().load(std::memory_order_acquire);
        if (pool != nullptr) return *pool;
        static std::mutex making;  // two threads' first kernels at once make one pool
        std::lock_guard<std::mutex> lock(making);
        static bool forgotten_in_children = pthread_atfork(nullptr, nullptr, [] { current().store(nullptr); }) == 0;
        (void)forgotten_in_children;
        if (current().load(std::memory_order_acquire) == nullptr)
            current().store(new Pool(thread_count()), std::memory_order_release);
        return *current().load(std::memory_order_acquire);
    }

  private:
    static std::atomic<Pool*>& current() {
        static std::atomic<Pool*> pool{nullptr};
        return pool;
    }

    explicit Pool(int threads) : threads_(threads) {
        for (int t = 1; t < threads_; t++) std::thread([this, t] { work(t); }).detach();
    }

    static int thread_count() {
        const char* env = std::getenv("OMP_NUM_THREADS");
        if (env != nullptr && std::atoi(env) > 0) return std::atoi(env);
#ifdef __linux__
        cpu_set_t set;  // the cores this process may run on (taskset, a container's limit), not all the machine's
        if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
        unsigned n = std::thread::hardware_concurrency();
        return n > 0 ? (int)n : 1;
    }

    static double now() {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }

    void work(int t) {
        long long seen = 0;  // the generation at the pool's making (not a load: the first job may be out already)
        long long ahead_seen = 0, done = 0;  // the read-ahead request this worker is on, and how far it has come
        double idle_since = now();
        for (;;) {
            long long generation = generation_.load(std::memory_order_acquire);
            if (generation != seen) {
                seen = generation;
                job_(ctx_, t, threads_);
                running_.fetch_sub(1, std::memory_order_release);
                idle_since = now();
                done = 0;  // a job (attention's keys) may have pushed what was read ahead out of the cache: again
                continue;
            }
            long long request = ahead_.load(std::memory_order_acquire);
            if (request != ahead_seen) ahead_seen = request, done = 0;
            if (done < READ_AHEAD_BYTES && read_ahead_lines(t, done)) {
                done += 16 * LINE;  // 16 lines of each of this worker's shares, then look for a job again
                continue;
            }
            if (now() - idle_since < SPIN_SECONDS) {
                cpu_relax();
                continue;
            }
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            sleepers_.fetch_sub(1);
        }
    }

    // Prefetch 16 lines at `offset` into worker t's share of the read-ahead region. False when there is nothing
    // (left) to read.
    bool read_ahead_lines(int t, long long offset) {
        // (A request made meanwhile can mix old and new fields: a prefetch of any address is harmless, never a fault.)
        const char* start = ahead_start_.load(std::memory_order_relaxed);
        long long item_bytes = ahead_item_bytes_.load(std::memory_order_relaxed);
        long long begin, end;
        share_of(ahead_items_.load(std::memory_order_relaxed), t, threads_, begin, end);
        long long share = (end - begin) * item_bytes;
        if (start == nullptr || offset >= share) return false;
        for (long long line = 0; line < 16 * LINE && offset + line < share; line += LINE)
            __builtin_prefetch(start + begin * item_bytes + offset + line, 0, 3);
        return true;
    }

    const int threads_;
    std::atomic<long long> generation_{0};
    std::atomic<int> running_{0};
    std::atomic<int> sleepers_{0};
    void (*job_)(void*, int, int) = nullptr;
    void* ctx_ = nullptr;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::mutex run_mutex_;
    std::atomic<long long> ahead_{0};
    std::atomic<const char*> ahead_start_{nullptr};
    std::atomic<long long> ahead_items_{0};
    std::atomic<long long> ahead_item_bytes_{0};
};

// body(i) for the items from `next` up to n, taken `chunk` at a time by whichever thread calls this (the counter is
// shared: each item is done once).
template <class Body> void take_chunks(std::atomic<long long>& next, long long n, long long chunk, Body&& body) {
    for (long long i = next.fetch_add(chunk); i < n; i = next.fetch_add(chunk))
        for (long long j = i; j < i + chunk && j < n; j++) body(j);
}

// Items 0 .. n-1 taken `chunk` at a time from a shared counter: for work of uneven cost (attention's rows).
template <class Body> void for_each_dynamic(bool parallel, long long n, long long chunk, Body&& body) {
    std::atomic<long long> next{0};
    Pool::get().run(parallel, [&](int, int) { take_chunks(next, n, chunk, body); });
}

// Items 0 .. n-1 in one contiguous share per thread: for work of even cost (norms, activations, RoPE's rows).
template <class Body> void for_each_static(bool parallel, long long n, Body&& body) {
    Pool::get().run(parallel, [&](int t, int threads) {
        long long begin, end;
        share_of(n, t, threads, begin, end);
        for (long long i = begin; i < end; i++) body(i);
    });
}
