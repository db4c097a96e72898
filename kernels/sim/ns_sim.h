// ns_sim.h: the simulated GPU device's runtime. It runs the unchanged kernels/hip/*.hip
// sources, through the real compat.h, as ordinary host C++ (novastack's `--device sim`,
// kernels/src/vendor/sim). Pre-included by the host C++ compiler (`-include ns_sim.h`);
// the Rust side also rewrites each `__shared__` declaration into NS_SIM_SHARED /
// ns_sim::dyn_shared() (vendor/sim/source.rs), so that shared memory is fresh and
// poisoned for every block.
//
// Branch: -DNS_SIM_AMD takes compat.h's AMD branch (__HIPCC_RTC__: __shfl_xor / __shfl
// with a width, 64-bit __ballot, the amdgcn wave barrier); otherwise its NVIDIA branch
// (__CUDACC_RTC__: the *_sync intrinsics with the full mask, and an empty cuda_fp16.h
// from the include path). NS_WARP, the lanes of a warp, comes from the backend's
// `#define NS_WARP` prefix, as on a GPU; the launch passes the same width in `Config`.
//
// Execution: a block's threads are fibers on one OS thread. A fiber runs until it
// reaches a __syncthreads or a warp collective (shuffle, ballot, wave barrier,
// __syncwarp) and then waits: a collective completes when every lane of its warp is
// at it, a barrier when every thread of the block is. The order in which runnable
// threads go (Config::order) is the interleaving; a result that changes with it is a
// race. Blocks of a grid run one after another on each calling OS thread (the Rust side
// spreads blocks over threads).
//
// Checks, each reported with the kernel, block, thread and source line, never a hang:
// lanes of a warp at different collectives, a collective with exited lanes or in a
// partial warp, threads at different barriers, threads exiting while others wait (in
// strict mode), deadlock, a wrong argument count or argument size, more shared memory
// than the device has, and any access outside mapped memory (the device's allocations
// are surrounded by guard pages, dynamic shared memory ends at one): the fault is caught
// in the kernel (SIGSEGV/SIGBUS), and its address and instruction are returned.
#pragma once

#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(NS_SIM_AMD)
#define __HIPCC_RTC__ 1
#else
#define __CUDACC_RTC__ 1
#endif

namespace ns_sim {

// ---- What the Rust side passes (kernels/src/vendor/sim/ffi.rs mirrors these) ----

struct Config {
  unsigned grid[3];
  unsigned block[3];
  unsigned long dyn_shared;    // bytes of dynamic shared memory
  unsigned long shared_limit;  // the device's shared memory per block
  unsigned warp;               // lanes per warp: the NS_WARP this source was built with
  int order;                   // Order below
  unsigned long seed;          // for ORDER_RANDOM
  int poison;                  // Poison below: fill of shared memory before each block
  int strict_exit;             // a thread exiting while others wait at a barrier fails
};

enum Order { ORDER_PASS = 0, ORDER_REVERSE, ORDER_WARP, ORDER_WARP_REVERSE, ORDER_RANDOM };
enum Poison { POISON_NAN = 0, POISON_BIG, POISON_ZERO };

struct Report {
  int status;               // 0 ok, 1 error (msg), 2 memory fault (msg, addr, pc_offset)
  char msg[1024];
  unsigned long fault_addr;
  unsigned long pc_offset;  // from the start of the shared object (for addr2line)
};

// ---- Fibers ----

#if defined(__x86_64__)
// Switch: save the callee-saved registers on the current stack, store its pointer in
// *from, load `to`'s and return into it. The floating-point control state (MXCSR, x87
// control word) is not switched: every fiber runs with the thread's, which kernels never
// change. (glibc's swapcontext also saves the signal mask, one system call per switch.)
extern "C" void ns_sim_switch(void** from, void* to);
asm(R"(
.text
.globl ns_sim_switch
.hidden ns_sim_switch
.type ns_sim_switch,@function
ns_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size ns_sim_switch, .-ns_sim_switch
)");
struct Ctx {
  void* sp;
};
inline void ctx_switch(Ctx* from, Ctx* to) { ns_sim_switch(&from->sp, to->sp); }
// A fiber on [stack, stack + size) that starts in `entry`, which never returns.
inline void ctx_make(Ctx* c, char* stack, size_t size, void (*entry)()) {
  uint64_t* top = (uint64_t*)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
  *--top = 0;                // entry's return address: rsp % 16 == 8 on entry, as after a call
  *--top = (uint64_t)entry;  // where the switch's `ret` goes
  for (int i = 0; i < 6; ++i) *--top = 0;  // rbp rbx r12 r13 r14 r15
  c->sp = top;
}
#else
struct Ctx {
  ucontext_t uc;
};
inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
inline void ctx_make(Ctx* c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = size;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
#endif

// ---- Blocks ----

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

enum State : unsigned char { RUN, BAR, WARP, DONE };
enum Op : int { OP_SHFL = 1, OP_BALLOT, OP_WAVE_BARRIER };

struct Block;

struct Lane {
  Ctx ctx;
  Block* blk;
  dim3 tid;
  unsigned lin;
  State st;
  int op, src, line;
  const char* file;
  long ncoll, nbar;  // collectives / barriers passed: must agree across a warp / the block
  uint64_t val, res;
};

constexpr unsigned kMaxThreads = 1024;
constexpr size_t kStack = 64 * 1024;

struct Block {
  dim3 bid, bdim, gdim;
  unsigned n, warp;
  const Config* cfg;
  const char* kernel;
  Ctx sched;
  void (*body)(void*);
  void* arg;
  bool failed;
  Report* rep;
};

// The running block and lane, for the scheduler and error reports. Kernel code finds its
// lane through cur() instead: thread-local storage in a loaded library costs a
// __tls_get_addr call per access.
// The lane whose fiber is running: each fiber stack is kStack-aligned and starts with a
// pointer to its lane, so the stack pointer alone finds it.
inline Lane* cur() {
  const uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
  return *(Lane**)(sp & ~(uintptr_t)(kStack - 1));
}

inline thread_local Block* B;
inline thread_local Lane* L;

inline const char* base_name(const char* f) {
  const char* s = f ? strrchr(f, '/') : nullptr;
  return s ? s + 1 : (f ? f : "?");
}

// Writes the block's error (kernel and block first) into the report.
inline void block_error(const char* fmt, ...) {
  Report* r = B->rep;
  int off = snprintf(r->msg, sizeof r->msg, "kernel %s, block (%u,%u,%u): ", B->kernel, B->bid.x, B->bid.y, B->bid.z);
  va_list ap;
  va_start(ap, fmt);
  if (off > 0 && (size_t)off < sizeof r->msg) vsnprintf(r->msg + off, sizeof r->msg - off, fmt, ap);
  va_end(ap);
  r->status = 1;
  B->failed = true;
}

// From a fiber: report and park; the scheduler sees `failed` and stops the block.
[[noreturn]] inline void fail(const char* fmt, ...) {
  char buf[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  Lane* l = cur();
  block_error("thread %u: %s", l->lin, buf);
  for (;;) ctx_switch(&l->ctx, &l->blk->sched);
}

inline void syncthreads(const char* file, int line) {
  Lane* l = cur();
  l->st = BAR;
  l->file = file;
  l->line = line;
  ++l->nbar;
  ctx_switch(&l->ctx, &l->blk->sched);
}

// One lane's part of a warp collective; returns what the collective gave this lane.
inline uint64_t collective(int op, uint64_t val, int src, const char* file, int line) {
  Lane* l = cur();
  l->st = WARP;
  l->op = op;
  l->val = val;
  l->src = src;
  l->file = file;
  l->line = line;
  ++l->ncoll;
  ctx_switch(&l->ctx, &l->blk->sched);
  return l->res;
}

inline int lane_id() {
  const Lane* l = cur();
  return (int)(l->lin % l->blk->warp);
}

template <typename T>
inline uint64_t bits(T v) {
  static_assert(sizeof(T) <= 8, "a shuffled value is at most 8 bytes");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}

// AMD: HIP's __shfl_xor / __shfl with a width (ds_bpermute: a source index past the
// lane's width-group reads the lane's own value).
template <typename T>
inline T amd_shfl_xor(T v, int mask, int width, const char* file, int line) {
  const int self = lane_id();
  int idx = self ^ mask;
  if (idx >= ((self + width) & ~(width - 1))) idx = self;
  return from_bits<T>(collective(OP_SHFL, bits(v), idx, file, line));
}
template <typename T>
inline T amd_shfl(T v, int src, int width, const char* file, int line) {
  const int self = lane_id();
  const int idx = (src & (width - 1)) + (self & ~(width - 1));
  return from_bits<T>(collective(OP_SHFL, bits(v), idx, file, line));
}
// NVIDIA: the *_sync forms. compat.h always names the full warp of 32 lanes.
inline void nv_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("a *_sync collective with mask %#x, not the full warp", mask);
  if (cur()->blk->warp != 32) fail("NVIDIA *_sync intrinsics on a %u-lane warp", cur()->blk->warp);
}
template <typename T>
inline T nv_shfl_xor(unsigned mask, T v, int lane_mask, int width, const char* file, int line) {
  nv_full_mask(mask);
  const int self = lane_id();
  int idx = self ^ lane_mask;
  if (idx >= ((self & ~(width - 1)) + width)) idx = self;  // a later group: own value
  return from_bits<T>(collective(OP_SHFL, bits(v), idx, file, line));
}
template <typename T>
inline T nv_shfl(unsigned mask, T v, int src, int width, const char* file, int line) {
  nv_full_mask(mask);
  const int self = lane_id();
  const int idx = (self & ~(width - 1)) + (src % width);
  return from_bits<T>(collective(OP_SHFL, bits(v), idx, file, line));
}

// Per-OS-thread fiber stacks: one mapping, reserved once and committed as touched, freed
// when the thread exits. The lowest bytes of each stack hold a canary, checked after
// every block, so a fiber that overflows its stack is reported (one mapping, not a guard
// page per fiber: a process has a limited number of mappings).
constexpr uint64_t kCanary = 0x6e735f73696d5f21ull;  // "ns_sim_!"
constexpr unsigned kCanaryWords = 8;
struct Stacks {
  char* map = nullptr;
  char* base = nullptr;
  Lane lanes[kMaxThreads];
  ~Stacks() {
    if (map) munmap(map, kStack * (kMaxThreads + 1));
  }
};
inline thread_local Stacks stacks;

inline bool ensure_stacks(Report* rep) {
  if (stacks.base) return true;
  // kStack-aligned stacks (cur() relies on it): map one stack more and align inside.
  const size_t bytes = kStack * (kMaxThreads + 1);
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    snprintf(rep->msg, sizeof rep->msg, "cannot map %zu bytes of fiber stacks", bytes);
    rep->status = 1;
    return false;
  }
  stacks.map = (char*)m;
  stacks.base = (char*)(((uintptr_t)m + kStack - 1) & ~(uintptr_t)(kStack - 1));
  return true;
}

// Each stack: [its lane pointer | the canary | ... the fiber's frames, growing down].
inline char* stack_of(unsigned lane) { return stacks.base + (size_t)lane * kStack; }
inline uint64_t* canary(unsigned lane) { return (uint64_t*)(stack_of(lane) + 8); }
constexpr size_t kStackHeader = 8 + 8 * kCanaryWords;

[[noreturn]] inline void lane_main() {
  Lane* l = cur();
  l->blk->body(l->blk->arg);
  l->st = DONE;
  for (;;) ctx_switch(&l->ctx, &l->blk->sched);
}

// A tiny deterministic generator for the random interleaving.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Runs one block to completion under the configured order; false with the report
// filled in on an error.
inline bool run_block(Block& b) {
  Lane* lanes = stacks.lanes;
  const unsigned n = b.n, W = b.warp, nw = (n + W - 1) / W;
  B = &b;
  for (unsigned i = 0; i < n; ++i) {
    Lane& l = lanes[i];
    l = Lane{};
    l.lin = i;
    l.blk = &b;
    l.tid = dim3{i % b.bdim.x, (i / b.bdim.x) % b.bdim.y, i / (b.bdim.x * b.bdim.y)};
    l.st = RUN;
    *(Lane**)stack_of(i) = &l;
    for (unsigned w = 0; w < kCanaryWords; ++w) canary(i)[w] = kCanary;
    // Stacks are kStack apart: start each fiber's frames at a different offset within a
    // 4 KiB page, or every fiber's hot frames land in the same cache sets.
    const size_t stagger = (size_t)i * 208 % 4096;
    ctx_make(&l.ctx, stack_of(i) + kStackHeader, kStack - kStackHeader - stagger, lane_main);
  }
  auto stack_ok = [&] {
    for (unsigned i = 0; i < n; ++i)
      for (unsigned w = 0; w < kCanaryWords; ++w)
        if (canary(i)[w] != kCanary) {
          block_error("thread %u overflowed its %zu KiB fiber stack (large local arrays?)", i, kStack / 1024);
          return false;
        }
    return true;
  };
  const int order = b.cfg->order;
  uint64_t rng = mix(b.cfg->seed ^ ((uint64_t)b.bid.x << 40) ^ ((uint64_t)b.bid.y << 20) ^ b.bid.z);
  unsigned perm[kMaxThreads];
  auto shuffle = [&](unsigned count) {
    for (unsigned i = 0; i < count; ++i) perm[i] = i;
    for (unsigned i = count; i > 1; --i) {
      rng = mix(rng);
      const unsigned j = (unsigned)(rng % i);
      const unsigned t = perm[i - 1];
      perm[i - 1] = perm[j];
      perm[j] = t;
    }
  };
  auto run_lane = [&](unsigned i) {
    if (lanes[i].st != RUN) return true;
    L = &lanes[i];
    ctx_switch(&b.sched, &lanes[i].ctx);
    return !b.failed;
  };
  // 1: the warp's collective completed; 0: not every live lane is there yet; -1: error.
  auto release_warp = [&](unsigned w) {
    const unsigned lo = w * W, hi = lo + W < n ? lo + W : n;
    unsigned live = 0, waiting = 0;
    for (unsigned i = lo; i < hi; ++i)
      if (lanes[i].st != DONE) ++live, waiting += lanes[i].st == WARP;
    if (waiting == 0 || waiting != live) return 0;
    const Lane& a = lanes[lo];
    if (hi - lo != W) {
      block_error("warp %u: a warp collective (%s:%d) in a partial warp of %u lanes (the warp is %u)", w,
                  base_name(a.file), a.line, hi - lo, W);
      return -1;
    }
    if (live != W) {
      const Lane* f = nullptr;
      for (unsigned i = lo; i < hi && !f; ++i)
        if (lanes[i].st == WARP) f = &lanes[i];
      block_error("warp %u: a warp collective (%s:%d) with %u of %u lanes exited", w, base_name(f->file), f->line, W - live,
                  W);
      return -1;
    }
    for (unsigned i = lo + 1; i < hi; ++i) {
      const Lane& l = lanes[i];
      if (l.op != a.op || l.ncoll != a.ncoll || l.line != a.line || l.file != a.file) {
        block_error("warp %u: lanes at different warp collectives: lane 0 at %s:%d (its #%ld), lane %u at %s:%d (its #%ld)",
                    w, base_name(a.file), a.line, a.ncoll, i - lo, base_name(l.file), l.line, l.ncoll);
        return -1;
      }
    }
    uint64_t ballot = 0;
    for (unsigned i = lo; i < hi; ++i) ballot |= (uint64_t)(lanes[i].val != 0) << (i - lo);
    for (unsigned i = lo; i < hi; ++i) {
      Lane& l = lanes[i];
      if (l.op == OP_SHFL) l.res = lanes[lo + l.src].val;
      if (l.op == OP_BALLOT) l.res = ballot;
      l.st = RUN;
    }
    return 1;
  };
  for (;;) {
    if (order == ORDER_WARP || order == ORDER_WARP_REVERSE || order == ORDER_RANDOM) {
      // Warp-serial: each warp runs as far as it can (to a barrier or the end) before the
      // next; ORDER_RANDOM also permutes the warps and the lanes within each pass.
      if (order == ORDER_RANDOM) shuffle(nw);
      for (unsigned k = 0; k < nw; ++k) {
        const unsigned w = order == ORDER_RANDOM ? perm[k] : order == ORDER_WARP_REVERSE ? nw - 1 - k : k;
        const unsigned lo = w * W, hi = lo + W < n ? lo + W : n;
        for (int r = 1; r == 1;) {
          if (order == ORDER_RANDOM) {
            unsigned lp[64];
            for (unsigned j = 0; j < hi - lo; ++j) lp[j] = lo + j;
            for (unsigned j = hi - lo; j > 1; --j) {
              rng = mix(rng);
              const unsigned x = (unsigned)(rng % j), t = lp[j - 1];
              lp[j - 1] = lp[x];
              lp[x] = t;
            }
            for (unsigned j = 0; j < hi - lo; ++j)
              if (!run_lane(lp[j])) return false;
          } else {
            for (unsigned j = lo; j < hi; ++j)
              if (!run_lane(order == ORDER_WARP_REVERSE ? hi - 1 - (j - lo) : j)) return false;
          }
          if ((r = release_warp(w)) < 0) return false;
        }
      }
    } else {
      // Pass: every runnable thread to its next sync point, in thread order (or reversed),
      // then every warp whose lanes all wait at a collective.
      for (unsigned k = 0; k < n; ++k)
        if (!run_lane(order == ORDER_REVERSE ? n - 1 - k : k)) return false;
      bool released = false;
      for (unsigned w = 0; w < nw; ++w) {
        const int r = release_warp(w);
        if (r < 0) return false;
        released |= r == 1;
      }
      if (released) continue;
    }
    unsigned done = 0, bar = 0;
    for (unsigned i = 0; i < n; ++i) done += lanes[i].st == DONE, bar += lanes[i].st == BAR;
    if (done == n) return stack_ok();
    if (bar > 0 && bar + done == n) {
      const Lane* first = nullptr;
      for (unsigned i = 0; i < n; ++i) {
        const Lane& l = lanes[i];
        if (l.st != BAR) continue;
        if (!first) {
          first = &l;
        } else if (l.line != first->line || l.file != first->file || l.nbar != first->nbar) {
          block_error("threads %u and %u wait at different __syncthreads (%s:%d, its #%ld; %s:%d, its #%ld)", first->lin,
                      l.lin, base_name(first->file), first->line, first->nbar, base_name(l.file), l.line, l.nbar);
          return false;
        }
      }
      if (done > 0 && b.cfg->strict_exit) {
        block_error("%u threads exited while %u wait at __syncthreads (%s:%d)", done, bar, base_name(first->file),
                    first->line);
        return false;
      }
      for (unsigned i = 0; i < n; ++i)
        if (lanes[i].st == BAR) lanes[i].st = RUN;
      continue;
    }
    // Nothing can move: some threads wait at a barrier, others at a collective.
    char what[400];
    int off = 0;
    for (unsigned i = 0, shown = 0; i < n && shown < 6; ++i) {
      const Lane& l = lanes[i];
      if (l.st == DONE) continue;
      off += snprintf(what + off, sizeof what - off, " thread %u at %s %s:%d;", i, l.st == BAR ? "__syncthreads" : "a collective",
                      base_name(l.file), l.line);
      if (off >= (int)sizeof what) break;
      ++shown;
    }
    block_error("deadlock (a barrier or collective not every thread reaches):%s", what);
    return false;
  }
}

// ---- Shared memory ----

// One arena per OS thread: static `__shared__` arrays are laid out in it afresh for each
// block, after the poison fill, and the dynamic shared memory ends at a guard page.
struct Shared {
  unsigned char* dyn = nullptr;  // dynamic shared memory: [dyn, dyn + dyn_cap) then a guard page
  size_t dyn_cap = 0;
  size_t dyn_bytes = 0;          // this launch's
  alignas(64) unsigned char arena[64 * 1024];
  size_t used = 0, high = 0;
  int ids[64];
  size_t offs[64];
  int n = 0;
  ~Shared() {
    if (dyn) munmap(dyn, dyn_cap + (size_t)sysconf(_SC_PAGESIZE));
  }
};
inline thread_local Shared* shared;
struct SharedOwner {
  ~SharedOwner() { delete shared; }
};
inline thread_local SharedOwner shared_owner;

inline int poison_byte(int p) { return p == POISON_BIG ? 0x7f : p == POISON_ZERO ? 0 : 0xff; }

// Maps room for `bytes` of dynamic shared memory ending exactly at a guard page.
inline bool ensure_shared(size_t bytes, Report* rep) {
  if (!shared) {
    shared = new Shared();
    (void)&shared_owner;  // registers the thread-exit cleanup
  }
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t want = (bytes + page - 1) / page * page;
  if (shared->dyn_cap < want || !shared->dyn) {
    if (shared->dyn) munmap(shared->dyn, shared->dyn_cap + page);
    const size_t cap = want < 64 * 1024 ? 64 * 1024 : want;
    void* m = mmap(nullptr, cap + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      snprintf(rep->msg, sizeof rep->msg, "cannot map %zu bytes of shared memory", cap);
      rep->status = 1;
      shared->dyn = nullptr;
      return false;
    }
    mprotect((char*)m + cap, page, PROT_NONE);
    shared->dyn = (unsigned char*)m;
    shared->dyn_cap = cap;
  }
  shared->dyn_bytes = bytes;
  return true;
}

// Dynamic shared memory (`extern __shared__ T name[]`): its last byte touches the guard.
inline void* dyn_shared() { return shared->dyn + shared->dyn_cap - ((shared->dyn_bytes + 15) & ~(size_t)15); }

inline void reset_shared(int poison) {
  const int p = poison_byte(poison);
  memset(shared->arena, p, shared->high);
  if (shared->dyn_bytes) memset(dyn_shared(), p, shared->dyn_bytes);
  shared->used = 0;
  shared->n = 0;
}

// The static shared array `id` of this block (the same for every thread of the block).
inline void* shared_slot(int id, size_t bytes, size_t align, const char* name, const char* file, int line) {
  Shared& s = *shared;
  for (int i = 0; i < s.n; ++i)
    if (s.ids[i] == id) return s.arena + s.offs[i];
  const size_t off = (s.used + align - 1) / align * align;
  const size_t total = off + bytes + s.dyn_bytes;
  const Config* cfg = cur()->blk->cfg;
  if (total > cfg->shared_limit || off + bytes > sizeof s.arena || s.n == 64)
    fail("__shared__ %s (%s:%d) brings the block to %zu bytes of shared memory (%zu static + %zu dynamic), over the "
         "device's %lu",
         name, base_name(file), line, total, off + bytes, s.dyn_bytes, cfg->shared_limit);
  s.ids[s.n] = id;
  s.offs[s.n++] = off;
  s.used = off + bytes;
  if (s.used > s.high) {
    memset(s.arena + s.high, poison_byte(cfg->poison), s.used - s.high);
    s.high = s.used;
  }
  return s.arena + off;
}

// ---- Memory faults ----

// A fault in a kernel jumps back to the launch that ran it; any other goes to the
// handler that was there before (Rust's stack-overflow handler, or the default).
struct Fault {
  sigjmp_buf jump;
  volatile int armed;
  uintptr_t addr, pc;
};
inline thread_local Fault fault;
inline struct sigaction previous[2];

#if defined(__x86_64__)
inline uintptr_t fault_pc(void* uc) { return (uintptr_t)((ucontext_t*)uc)->uc_mcontext.gregs[REG_RIP]; }
#elif defined(__aarch64__)
inline uintptr_t fault_pc(void* uc) { return (uintptr_t)((ucontext_t*)uc)->uc_mcontext.pc; }
#else
inline uintptr_t fault_pc(void*) { return 0; }
#endif

inline void on_fault(int sig, siginfo_t* si, void* uc) {
  if (fault.armed) {
    fault.armed = 0;
    fault.addr = (uintptr_t)si->si_addr;
    fault.pc = fault_pc(uc);
    siglongjmp(fault.jump, 1);
  }
  struct sigaction& p = previous[sig == SIGBUS];
  if (p.sa_flags & SA_SIGINFO) {
    p.sa_sigaction(sig, si, uc);
  } else if (p.sa_handler != SIG_DFL && p.sa_handler != SIG_IGN) {
    p.sa_handler(sig);
  } else {
    signal(sig, SIG_DFL);  // returning re-executes the access, which now ends the process
  }
}

// The fault handler runs on an alternate stack (a fiber's stack may be what overflowed).
inline void ensure_altstack() {
  stack_t cur;
  if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
  stack_t s{};
  s.ss_size = 64 * 1024;
  s.ss_sp = malloc(s.ss_size);  // kept for the life of the thread
  if (s.ss_sp) sigaltstack(&s, nullptr);
}

template <typename F>
struct Call {
  F* f;
  void** params;
};

template <typename... A, size_t... I>
inline void invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <typename... A>
inline void body(void* arg) {
  auto* c = static_cast<Call<void(A...)>*>(arg);
  invoke(c->f, c->params, std::index_sequence_for<A...>{});
}

// Runs blocks [begin, end) of the launch `cfg` of kernel `f`; the report says how it went.
template <typename... A>
inline void run(const char* kernel, void (*f)(A...), const Config* cfg, void** params, const size_t* sizes, size_t nparams,
                long begin, long end, Report* rep) {
  rep->status = 0;
  rep->msg[0] = 0;
  const size_t want[] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
  if (nparams != sizeof...(A)) {
    snprintf(rep->msg, sizeof rep->msg, "kernel %s takes %zu arguments, the launch passed %zu", kernel, sizeof...(A),
             nparams);
    rep->status = 1;
    return;
  }
  for (size_t i = 0; i < nparams; ++i)
    if (sizes[i] != want[i]) {
      snprintf(rep->msg, sizeof rep->msg, "kernel %s: argument %zu is %zu bytes, the launch passed %zu", kernel, i, want[i],
               sizes[i]);
      rep->status = 1;
      return;
    }
  const unsigned threads = cfg->block[0] * cfg->block[1] * cfg->block[2];
  if (threads == 0 || threads > kMaxThreads) {
    snprintf(rep->msg, sizeof rep->msg, "kernel %s: a block of %u threads (1 to %u)", kernel, threads, kMaxThreads);
    rep->status = 1;
    return;
  }
  if (cfg->warp != 32 && cfg->warp != 64) {
    snprintf(rep->msg, sizeof rep->msg, "kernel %s: a warp of %u lanes (32 or 64)", kernel, cfg->warp);
    rep->status = 1;
    return;
  }
  if (cfg->dyn_shared > cfg->shared_limit) {
    snprintf(rep->msg, sizeof rep->msg, "kernel %s: %lu bytes of dynamic shared memory, over the device's %lu", kernel,
             cfg->dyn_shared, cfg->shared_limit);
    rep->status = 1;
    return;
  }
  if (!ensure_stacks(rep) || !ensure_shared(cfg->dyn_shared, rep)) return;
  ensure_altstack();
  Call<void(A...)> call{f, params};
  static thread_local Block b;
  b = Block{};
  b.bdim = dim3{cfg->block[0], cfg->block[1], cfg->block[2]};
  b.gdim = dim3{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
  b.n = threads;
  b.warp = cfg->warp;
  b.cfg = cfg;
  b.kernel = kernel;
  b.body = &body<A...>;
  b.arg = &call;
  b.rep = rep;
  static thread_local long k;
  if (sigsetjmp(fault.jump, 1)) {
    B = &b;
    snprintf(rep->msg, sizeof rep->msg,
             "kernel %s, block (%u,%u,%u), thread %u: memory fault (signal) at address %#lx", kernel, b.bid.x, b.bid.y,
             b.bid.z, L ? L->lin : 0u, (unsigned long)fault.addr);
    Dl_info info;
    rep->pc_offset = dladdr((void*)fault.pc, &info) && info.dli_fbase ? fault.pc - (uintptr_t)info.dli_fbase : 0;
    rep->fault_addr = fault.addr;
    rep->status = 2;
    return;
  }
  for (k = begin; k < end; ++k) {
    b.bid = dim3{(unsigned)(k % cfg->grid[0]), (unsigned)(k / cfg->grid[0] % cfg->grid[1]),
                 (unsigned)(k / ((long)cfg->grid[0] * cfg->grid[1]))};
    b.failed = false;
    reset_shared(cfg->poison);
    fault.armed = 1;
    const bool ok = run_block(b);
    fault.armed = 0;
    if (!ok) return;
  }
}

}  // namespace ns_sim

// The one-time setup of a loaded kernel library: the fault handler (chained).
extern "C" __attribute__((visibility("default"))) void ns_sim_install() {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = ::ns_sim::on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &::ns_sim::previous[0]);
  sigaction(SIGBUS, &sa, &::ns_sim::previous[1]);
}

// A static `__shared__ T name dims;`, rewritten by the Rust side: a reference into the
// block's arena.
#define NS_SIM_SHARED(T, name, dims)                                                                                      \
  T(&name) dims = *reinterpret_cast<T(*) dims>(                                                                          \
      ::ns_sim::shared_slot(__COUNTER__, sizeof(T dims), alignof(T), #name, __FILE__, __LINE__))

// ---- The CUDA / HIP built-ins that compat.h and the kernels use ----
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Every `__shared__` declaration is rewritten before compiling; one left over is an error.
#define __shared__ __shared__declaration_the_simulator_did_not_rewrite

#define threadIdx (::ns_sim::cur()->tid)
#define blockIdx (::ns_sim::cur()->blk->bid)
#define blockDim (::ns_sim::cur()->blk->bdim)
#define gridDim (::ns_sim::cur()->blk->gdim)
#define __syncthreads() ::ns_sim::syncthreads(__FILE__, __LINE__)

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
// A block's threads are fibers on one OS thread that switch only at barriers and
// collectives, so an atomic on shared memory needs nothing more; the blocks of a grid
// run on several OS threads, so one on global memory takes a real atomic. Relaxed, as
// the GPU's atomicAdd is.
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float __int_as_float(int i) { return ::ns_sim::from_bits<float>((uint32_t)i); }
inline float __uint_as_float(unsigned u) { return ::ns_sim::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)::ns_sim::bits(f); }
inline int __float_as_int(float f) { return (int)::ns_sim::bits(f); }

struct __half {
  _Float16 v;
};
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half(float f) { return __half{(_Float16)f}; }

#if defined(NS_SIM_AMD)
#define __shfl_xor(v, m, w) ::ns_sim::amd_shfl_xor((v), (m), (w), __FILE__, __LINE__)
#define __shfl(v, s, w) ::ns_sim::amd_shfl((v), (s), (w), __FILE__, __LINE__)
#define __ballot(p) ::ns_sim::collective(::ns_sim::OP_BALLOT, (p) ? 1 : 0, 0, __FILE__, __LINE__)
#define __builtin_amdgcn_fence(order, scope) __atomic_signal_fence(order)
#define __builtin_amdgcn_wave_barrier() ((void)::ns_sim::collective(::ns_sim::OP_WAVE_BARRIER, 0, 0, __FILE__, __LINE__))
#else
#define __shfl_xor_sync(mask, v, m, ...) ::ns_sim::nv_shfl_xor((mask), (v), (m), 32, __FILE__, __LINE__)
#define __shfl_sync(mask, v, s, ...) ::ns_sim::nv_shfl((mask), (v), (s), 32, __FILE__, __LINE__)
#define __ballot_sync(mask, p) \
  ((unsigned)(::ns_sim::nv_full_mask(mask), ::ns_sim::collective(::ns_sim::OP_BALLOT, (p) ? 1 : 0, 0, __FILE__, __LINE__)))
#define __syncwarp(...) ((void)::ns_sim::collective(::ns_sim::OP_WAVE_BARRIER, 0, 0, __FILE__, __LINE__))
#endif
