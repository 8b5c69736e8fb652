// cuda_emulator.cpp: the scheduler of the CPU emulator -- runs a CUDA grid with one fiber per CUDA thread.
//
// Read kernels/emulator/cuda_emulator.h first (what a kernel sees), then this file (how a launch runs).
//
// A launch (nanollm_emu_launch, at the bottom) runs the blocks of the grid one after another. For one block:
//   * every CUDA thread gets a fiber: its own stack plus, while it is paused, its saved CPU registers ("Switching
//     stacks" below shows how). Switching is cooperative: a fiber runs until it reaches a sync point
//     (__syncthreads, a warp collective, a failed atomicCAS, __nanosleep) or returns from the kernel;
//   * the scheduler works in rounds: it resumes each runnable fiber once, in thread order, and each runs up to its
//     next sync point. Then it releases whatever can be released: the block barrier when every thread of the block
//     waits at it, and each warp collective whose mask's lanes have all arrived (computing the shuffled values for
//     all of them at once, like the hardware does);
//   * if after a round nothing is runnable and nothing can be released, no thread can ever move again: that is a
//     deadlock, and the launch returns an error describing who waits where instead of hanging.
// Because every fiber of a block runs on the one OS thread that called the launch, plain loads and stores are
// never concurrent: a barrier's only job is to decide *when* each fiber may continue.
//
// Costs: a kernel pays roughly 2 x (threads x sync points) switches per block, about 10 ns each on x86-64 and a
// few hundred ns with ucontext. Stacks are 64 KiB per thread by default, one guard page below each so an overflow
// is a clean crash rather than silent corruption.
#include "cuda_emulator.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdlib>
#include <string>
#include <vector>

namespace nanollm_emu {

// ---- Switching stacks ------------------------------------------------------------------------------------------
//
// A context is "where a paused fiber's registers are". Two implementations, one interface:
//   context_start(c, stack, bytes, entry)  prepare c so that switching to it calls entry() on that stack;
//   context_switch(from, to)               save the running registers into `from`, continue wherever `to` paused.
//
// On x86-64 the switch is fifteen instructions: push the registers the System V ABI says a called function must
// preserve (rbx, rbp, r12-r15), store the stack pointer, load the other fiber's stack pointer, pop its registers
// and `ret` into the code that called context_switch on that stack. Everything else (caller-saved registers, the
// instruction pointer) is already saved by the compiler around the call. The floating-point control words are not
// switched: kernels do not change rounding modes.
// Elsewhere (or when built with -DNANOLLM_EMU_UCONTEXT) it is POSIX makecontext/swapcontext, which does the same
// plus a system call per switch to save the signal mask, about 30 times slower.
namespace {
#if defined(__x86_64__) && !defined(NANOLLM_EMU_UCONTEXT)
struct Context {
    void* stack_pointer;
};

// context_switch_asm(&from->stack_pointer, to->stack_pointer); naked: the compiler adds no prologue or epilogue.
__attribute__((naked, noinline)) void context_switch_asm(void** /*save*/, void* /*load*/) {
    __asm__ volatile(
        "pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "movq %rsp, (%rdi)\n\t"  // save: first argument
        "movq %rsi, %rsp\n\t"    // load: second argument
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}

void context_switch(Context& from, Context& to) { context_switch_asm(&from.stack_pointer, to.stack_pointer); }

// Build the frame context_switch_asm expects to pop: six zeroed registers, then a return address that "returns"
// into entry(). The slot above it stands for entry's own return address (entry never returns); it makes the stack
// pointer 8 mod 16 when entry starts, as the ABI requires right after a call.
void context_start(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    std::uintptr_t top = reinterpret_cast<std::uintptr_t>(stack + bytes) & ~std::uintptr_t{15};
    void** frame = reinterpret_cast<void**>(top) - 8;
    for (int i = 0; i < 6; ++i) frame[i] = nullptr;
    frame[6] = reinterpret_cast<void*>(entry);
    frame[7] = nullptr;
    c.stack_pointer = frame;
}
#else
struct Context {
    ucontext_t uc;
};

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void context_start(Context& c, char* stack, std::size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif
}  // namespace

thread_local const LaunchCoordinates* current_launch = nullptr;
thread_local const uint3* current_thread_idx = nullptr;

namespace {

enum class State { runnable, at_barrier, at_warp, exited };

// Error codes returned to Python (kernels/emulator/__init__.py turns them into exceptions).
constexpr int kOk = 0;
constexpr int kDeadlock = 1;
constexpr int kMisuse = 2;
constexpr int kOutOfMemory = 3;

// This many failed atomicCAS / __nanosleep calls in a row, with no thread reaching a sync point or exiting in
// between, is taken as a spin lock nobody can release (about a tenth of a second of spinning).
constexpr long kMaxSpinsWithoutProgress = 1L << 18;

struct Fiber {
    Context context;
    uint3 thread_idx;
    int lane;  // linear thread index % 32
    State state;
    // At a barrier: the predicate it brought, and the barrier's answer (__syncthreads_count etc.).
    int predicate;
    int barrier_result;
    // At a warp collective: what it asked for, and the answer the scheduler computed.
    WarpOp op;
    unsigned mask;
    std::uint64_t bits;
    int operand;
    int width;
    bool is_signed;
    std::uint64_t result;
};

struct Block {
    const char* kernel_name;
    void (*launcher)(void**);
    void** args;
    LaunchCoordinates coordinates;
    std::vector<Fiber> fibers;
    Context scheduler;
    Fiber* running = nullptr;
    void* dynamic_shared = nullptr;
    std::size_t dynamic_shared_bytes = 0;
    long spins_without_progress = 0;
    int error_code = kOk;
    std::string error;
};

thread_local Block* current_block = nullptr;

std::string format(const char* fmt, ...) {
    char buffer[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buffer, sizeof buffer, fmt, ap);
    va_end(ap);
    return buffer;
}

Block& block_of_caller() {
    if (current_block == nullptr) {
        std::fprintf(stderr, "nanollm emulator: a CUDA sync function was called outside a kernel launch\n");
        std::abort();
    }
    return *current_block;
}

std::string where(const Block& b) {
    const uint3& i = b.coordinates.block_idx;
    return format("kernel '%s', block (%u, %u, %u) of %zu threads", b.kernel_name, i.x, i.y, i.z, b.fibers.size());
}

// Give the CPU back to the scheduler; returns when the scheduler resumes this fiber.
void pause(Block& b) {
    Fiber* self = b.running;
    context_switch(self->context, b.scheduler);
}

// Stop the launch from inside a fiber: record the error and never come back.
[[noreturn]] void fail(Block& b, int code, const std::string& message) {
    b.error_code = code;
    b.error = message;
    pause(b);
    std::abort();  // unreachable: the scheduler never resumes a fiber after an error
}

void fiber_main() {
    Block& b = *current_block;
    try {
        b.launcher(b.args);
    } catch (...) {
        // An exception must not unwind off the fiber's stack (there is nothing below it): report it instead.
        fail(b, kMisuse, where(b) + ": a C++ exception escaped the kernel");
    }
    b.running->state = State::exited;
    b.spins_without_progress = 0;
    pause(b);
    std::abort();  // unreachable: an exited fiber is never resumed
}

// ---- releasing a warp collective ------------------------------------------------------------------------------

constexpr std::uint64_t kUndefined = ~std::uint64_t{0};  // what a lane gets when it reads a lane not taking part

// The lane a shuffle reads from, or `self` when CUDA says the lane keeps its own value (outside its segment).
int shuffle_source(const Fiber& f) {
    const int self = f.lane;
    const int w = f.width;
    const int segment_start = self & ~(w - 1);
    switch (f.op) {
        case WarpOp::shfl_idx:
            return segment_start + (f.operand & (w - 1));  // srcLane modulo width
        case WarpOp::shfl_up:
            return (self - segment_start) >= f.operand ? self - f.operand : self;
        case WarpOp::shfl_down:
            return (self - segment_start) + f.operand < w ? self + f.operand : self;
        case WarpOp::shfl_xor: {
            // Lanes may read earlier segments but not later ones (CUDA programming guide, warp shuffle functions).
            const int source = self ^ f.operand;
            return (source >= 0 && source < segment_start + w) ? source : self;
        }
        default:
            return self;
    }
}

std::uint64_t reduce(const Fiber& a, std::uint64_t acc, std::uint64_t value) {
    if (a.op == WarpOp::reduce_add) return static_cast<std::uint32_t>(acc + value);
    bool less = a.is_signed ? static_cast<std::int32_t>(value) < static_cast<std::int32_t>(acc)
                            : static_cast<std::uint32_t>(value) < static_cast<std::uint32_t>(acc);
    if (a.op == WarpOp::reduce_min) return less ? value : acc;
    return less ? acc : value;
}

// Compute the answer of every lane in `group` (lanes that called the same collective with the same mask).
void complete_collective(Fiber* warp, unsigned group) {
    unsigned ballot = 0;
    std::uint64_t reduced = 0;
    bool first = true;
    for (int lane = 0; lane < 32; ++lane) {
        if (!(group >> lane & 1u)) continue;
        const Fiber& f = warp[lane];
        if (f.bits != 0) ballot |= 1u << lane;
        reduced = first ? f.bits : reduce(f, reduced, f.bits);
        first = false;
    }
    for (int lane = 0; lane < 32; ++lane) {
        if (!(group >> lane & 1u)) continue;
        Fiber& f = warp[lane];
        switch (f.op) {
            case WarpOp::syncwarp: f.result = 0; break;
            case WarpOp::ballot: f.result = ballot; break;
            case WarpOp::any: f.result = ballot != 0; break;
            case WarpOp::all: f.result = ballot == group; break;
            case WarpOp::reduce_add:
            case WarpOp::reduce_min:
            case WarpOp::reduce_max: f.result = reduced; break;
            default: {
                int source = shuffle_source(f);
                if (source < 0 || source > 31) source = f.lane;  // a huge unsigned delta wrapped negative
                f.result = (group >> source & 1u) ? warp[source].bits : kUndefined;
            }
        }
        f.state = State::runnable;
    }
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::syncwarp: return "__syncwarp";
        case WarpOp::shfl_idx: return "__shfl_sync";
        case WarpOp::shfl_up: return "__shfl_up_sync";
        case WarpOp::shfl_down: return "__shfl_down_sync";
        case WarpOp::shfl_xor: return "__shfl_xor_sync";
        case WarpOp::ballot: return "__ballot_sync";
        case WarpOp::any: return "__any_sync";
        case WarpOp::all: return "__all_sync";
        case WarpOp::reduce_add: return "__reduce_add_sync";
        case WarpOp::reduce_min: return "__reduce_min_sync";
        case WarpOp::reduce_max: return "__reduce_max_sync";
    }
    return "?";
}

// Release every warp collective whose lanes have all arrived. Returns whether anything was released; sets a
// deadlock error when a mask names a lane that has already exited.
bool release_warp_collectives(Block& b) {
    bool released = false;
    const int n = static_cast<int>(b.fibers.size());
    for (int first = 0; first < n; first += 32) {
        Fiber* warp = &b.fibers[first];
        const int lanes = n - first < 32 ? n - first : 32;
        const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
        for (int lane = 0; lane < lanes; ++lane) {
            const Fiber& f = warp[lane];
            if (f.state != State::at_warp) continue;
            const unsigned group = f.mask & existing;  // lanes beyond the end of the block cannot take part
            bool complete = true;
            for (int other = 0; other < lanes; ++other) {
                if (!(group >> other & 1u)) continue;
                const Fiber& g = warp[other];
                if (g.state == State::exited) {
                    b.error_code = kDeadlock;
                    b.error = format("%s: lane %d of warp %d waits at %s with mask 0x%08x, but lane %d of that "
                                     "mask has already exited and will never arrive",
                                     where(b).c_str(), lane, first / 32, op_name(f.op), f.mask, other);
                    return released;
                }
                if (g.state != State::at_warp || g.mask != f.mask) complete = false;
            }
            if (!complete) continue;
            for (int other = 0; other < lanes; ++other) {
                if ((group >> other & 1u) && warp[other].op != f.op) {
                    b.error_code = kMisuse;
                    b.error = format("%s: lanes of warp %d with mask 0x%08x reached different warp collectives "
                                     "(lane %d: %s, lane %d: %s)",
                                     where(b).c_str(), first / 32, f.mask, lane, op_name(f.op), other,
                                     op_name(warp[other].op));
                    return released;
                }
            }
            complete_collective(warp, group);
            released = true;
        }
    }
    return released;
}

// ---- releasing the block barrier ------------------------------------------------------------------------------

void release_barrier(Block& b) {
    int count = 0;
    for (const Fiber& f : b.fibers) count += f.predicate != 0;
    for (Fiber& f : b.fibers) {
        f.barrier_result = count;  // block_barrier turns the count into the and/or answer
        f.state = State::runnable;
    }
}

std::string describe_deadlock(const Block& b) {
    int at_barrier = 0, at_warp = 0, exited = 0, runnable = 0;
    for (const Fiber& f : b.fibers) {
        at_barrier += f.state == State::at_barrier;
        at_warp += f.state == State::at_warp;
        exited += f.state == State::exited;
        runnable += f.state == State::runnable;
    }
    std::string message = format("%s deadlocked: %d threads wait at __syncthreads, %d wait at a warp collective, "
                                 "%d have exited, %d are spinning",
                                 where(b).c_str(), at_barrier, at_warp, exited, runnable);
    if (at_barrier > 0 && exited > 0)
        message += " (every thread of a block must reach the same __syncthreads; a thread that returned early "
                   "never arrives)";
    for (const Fiber& f : b.fibers) {
        if (f.state == State::at_warp) {
            message += format("; e.g. thread %u waits at %s with mask 0x%08x", f.thread_idx.x, op_name(f.op),
                              f.mask);
            break;
        }
    }
    return message;
}

// Run one block to completion. Returns kOk or an error code (with b.error set).
int run_block(Block& b, char* stacks, std::size_t stack_stride, std::size_t stack_bytes) {
    const dim3& dim = b.coordinates.block_dim;
    const int n = static_cast<int>(b.fibers.size());
    for (int t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.thread_idx = uint3{t % dim.x, (t / dim.x) % dim.y, t / (dim.x * dim.y)};
        f.lane = t % 32;
        f.state = State::runnable;
        context_start(f.context, stacks + t * stack_stride + (stack_stride - stack_bytes), stack_bytes, fiber_main);
    }
    // Like on a GPU, shared memory starts with garbage; all-ones bytes make a read-before-write show up as NaN.
    if (b.dynamic_shared_bytes > 0) std::memset(b.dynamic_shared, 0xff, b.dynamic_shared_bytes);
    b.spins_without_progress = 0;

    for (;;) {
        for (Fiber& f : b.fibers) {
            if (f.state != State::runnable) continue;
            b.running = &f;
            current_thread_idx = &f.thread_idx;
            context_switch(b.scheduler, f.context);
            if (b.error_code != kOk) return b.error_code;
        }
        int at_barrier = 0, exited = 0, runnable = 0;
        for (const Fiber& f : b.fibers) {
            at_barrier += f.state == State::at_barrier;
            exited += f.state == State::exited;
            runnable += f.state == State::runnable;
        }
        if (exited == n) return kOk;
        if (at_barrier > 0 && exited > 0) {
            b.error = describe_deadlock(b);
            return kDeadlock;
        }
        bool progress = false;
        if (at_barrier == n) {
            release_barrier(b);
            progress = true;
        } else {
            progress = release_warp_collectives(b);
            if (b.error_code != kOk) return b.error_code;
        }
        if (!progress && runnable == 0) {
            b.error = describe_deadlock(b);
            return kDeadlock;
        }
    }
}

// One stack per thread, each with a PROT_NONE guard page below it. Making them costs a system call per stack and a
// page fault on first use, more than running a small kernel, so each OS thread keeps its stacks for the next launch
// (and frees them when it exits).
class StackPool {
  public:
    char* get(std::size_t count, std::size_t stride, std::size_t page) {
        if (region_ != nullptr && count <= count_ && stride == stride_) return region_;
        release();
        void* region = mmap(nullptr, count * stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) return nullptr;
        region_ = static_cast<char*>(region);
        count_ = count;
        stride_ = stride;
        for (std::size_t t = 0; t < count; ++t) mprotect(region_ + t * stride, page, PROT_NONE);
        return region_;
    }
    ~StackPool() { release(); }

  private:
    void release() {
        if (region_ != nullptr) munmap(region_, count_ * stride_);
        region_ = nullptr;
    }
    char* region_ = nullptr;
    std::size_t count_ = 0;
    std::size_t stride_ = 0;
};

thread_local StackPool stack_pool;

}  // namespace

// ---- the sync points, called from kernel code through cuda_emulator.h -----------------------------------------

int block_barrier(BarrierKind kind, int predicate) {
    Block& b = block_of_caller();
    Fiber& f = *b.running;
    f.state = State::at_barrier;
    f.predicate = predicate;
    b.spins_without_progress = 0;
    pause(b);
    const int count = f.barrier_result;
    const int n = static_cast<int>(b.fibers.size());
    switch (kind) {
        case BarrierKind::count: return count;
        case BarrierKind::all: return count == n;
        case BarrierKind::any: return count > 0;
        default: return 0;
    }
}

std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t bits, int operand, int width,
                              bool is_signed) {
    Block& b = block_of_caller();
    Fiber& f = *b.running;
    if (!(mask >> f.lane & 1u))
        fail(b, kMisuse,
             format("%s: thread %u (lane %d) called %s with mask 0x%08x, which does not include its own lane",
                    where(b).c_str(), f.thread_idx.x, f.lane, op_name(op), mask));
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail(b, kMisuse, format("%s: %s width %d is not a power of two between 1 and 32", where(b).c_str(),
                                op_name(op), width));
    f.state = State::at_warp;
    f.op = op;
    f.mask = mask;
    f.bits = bits;
    f.operand = operand;
    f.width = width;
    f.is_signed = is_signed;
    b.spins_without_progress = 0;
    pause(b);
    return f.result;
}

void spin_yield() {
    Block& b = block_of_caller();
    if (++b.spins_without_progress > kMaxSpinsWithoutProgress)
        fail(b, kDeadlock,
             format("%s deadlocked: threads spun on atomicCAS %ld times while no thread reached a sync point or "
                    "exited (a lock held by a thread that waits at a barrier, or a wait for another block: "
                    "blocks run one after another)",
                    where(b).c_str(), kMaxSpinsWithoutProgress));
    pause(b);  // stays runnable: the scheduler comes back after the other fibers had a turn
}

void* dynamic_shared_memory() { return block_of_caller().dynamic_shared; }

}  // namespace nanollm_emu

// ---- the launch, the one function Python calls ----------------------------------------------------------------

// Run `launcher(args)` on every thread of a grid, like cuLaunchKernel. `launcher` is the generated C function that
// unpacks `args` (an array of pointers to each argument's value) and calls the kernel. Returns 0, or an error code
// with a message in `message`: 1 deadlock, 2 invalid use of a CUDA built-in, 3 out of memory.
extern "C" int nanollm_emu_launch(void (*launcher)(void**), void** args, const char* kernel_name,
                                  const unsigned* grid, const unsigned* block, unsigned long long dynamic_shared_bytes,
                                  unsigned long long stack_bytes, char* message, unsigned long long message_capacity) {
    using namespace nanollm_emu;
    Block b;
    b.kernel_name = kernel_name;
    b.launcher = launcher;
    b.args = args;
    b.coordinates.grid_dim = dim3(grid[0], grid[1], grid[2]);
    b.coordinates.block_dim = dim3(block[0], block[1], block[2]);
    const std::size_t n = static_cast<std::size_t>(block[0]) * block[1] * block[2];

    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t stack = (stack_bytes + page - 1) / page * page;
    const std::size_t stride = stack + page;
    char* stacks = stack_pool.get(n, stride, page);
    if (stacks == nullptr) {
        std::snprintf(message, message_capacity, "could not allocate %zu fiber stacks of %zu bytes", n, stack);
        return kOutOfMemory;
    }

    b.fibers.resize(n);
    b.dynamic_shared_bytes = dynamic_shared_bytes;
    b.dynamic_shared = std::aligned_alloc(128, (dynamic_shared_bytes + 127) / 128 * 128 + 128);

    Block* outer_block = current_block;
    const LaunchCoordinates* outer_launch = current_launch;
    current_block = &b;
    current_launch = &b.coordinates;
    int code = kOk;
    for (unsigned z = 0; z < grid[2] && code == kOk; ++z)
        for (unsigned y = 0; y < grid[1] && code == kOk; ++y)
            for (unsigned x = 0; x < grid[0] && code == kOk; ++x) {
                b.coordinates.block_idx = uint3{x, y, z};
                code = run_block(b, stacks, stride, stack);
            }
    current_block = outer_block;
    current_launch = outer_launch;
    current_thread_idx = nullptr;

    std::free(b.dynamic_shared);
    if (code != kOk) std::snprintf(message, message_capacity, "%s", b.error.c_str());
    return code;
}
