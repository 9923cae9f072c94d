// Synthetic: R regions per "forward", each of C chunks of ~W ns of arithmetic, on 2 threads:
// OpenMP static (a barrier per region) vs a dynamic pool (the caller waits for the chunks, not the threads).
#include <torch/extension.h>
#include <atomic>
#include <chrono>
#include <thread>
#include <immintrin.h>
#include <omp.h>

__attribute__((noinline)) static double work(int64_t iters, double x) {
  for (int64_t i = 0; i < iters; ++i) x = x * 1.0000001 + 1e-9;
  return x;
}

double run_omp(int64_t regions, int64_t chunks, int64_t iters) {
  auto t0 = std::chrono::steady_clock::now();
  double sink = 0;
  for (int64_t r = 0; r < regions; ++r) {
#pragma omp parallel for num_threads(2) schedule(static) reduction(+ : sink)
    for (int64_t c = 0; c < chunks; ++c) sink += work(iters, c);
  }
  volatile double v = sink; (void)v;
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct Pool {
  std::atomic<uint64_t> state{0};  // epoch << 32 | next chunk
  std::atomic<int64_t> done{0};
  int64_t n = 0, iters = 0;
  std::atomic<bool> stop{false}, active{false};
  std::atomic<double> sink{0};
  std::thread worker;
  Pool() { worker = std::thread([this] { loop(); }); }
  ~Pool() { stop = true; worker.join(); }
  bool claim(uint32_t epoch, int64_t& idx) {
    uint64_t s = state.load(std::memory_order_acquire);
    for (;;) {
      if ((s >> 32) != epoch || int64_t(s & 0xffffffff) >= n) return false;
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) { idx = s & 0xffffffff; return true; }
    }
  }
  void loop() {
    uint32_t seen = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      uint64_t s = state.load(std::memory_order_acquire);
      uint32_t e = s >> 32;
      if (e == seen) {
        if (!active.load(std::memory_order_relaxed)) std::this_thread::sleep_for(std::chrono::microseconds(200));
        else _mm_pause();
        continue;
      }
      seen = e;
      int64_t idx;
      double local = 0;
      while (claim(e, idx)) { local += work(iters, idx); done.fetch_add(1, std::memory_order_release); }
      volatile double v = local; (void)v;
    }
  }
  double run(int64_t regions, int64_t chunks, int64_t it) {
    active = true;
    auto t0 = std::chrono::steady_clock::now();
    double local = 0;
    for (int64_t r = 0; r < regions; ++r) {
      uint32_t e = uint32_t(state.load() >> 32) + 1;
      n = chunks; iters = it;
      done.store(0, std::memory_order_relaxed);
      state.store(uint64_t(e) << 32, std::memory_order_release);
      int64_t idx;
      while (claim(e, idx)) { local += work(iters, idx); done.fetch_add(1, std::memory_order_release); }
      while (done.load(std::memory_order_acquire) < chunks) _mm_pause();
    }
    volatile double v = local; (void)v;
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    active = false;
    return ms;
  }
};
static Pool* pool = nullptr;
double run_pool(int64_t regions, int64_t chunks, int64_t iters) {
  if (!pool) pool = new Pool();
  return pool->run(regions, chunks, iters);
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run_omp", &run_omp); m.def("run_pool", &run_pool); }
