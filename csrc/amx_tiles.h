// PWCONV's bfloat16 and QPWCONV's int8 micro-kernel on AMX tiles, written out instead of reached through
// ATen's at::native::cpublas::brgemm.
//
// Why: at batch 1 MobileNetV3-Large makes ~1800 brgemm calls per forward (one per 64 x 32 output tile),
// and each call first looks its kernel up in ATen's cache (key construction, a hash-map lookup, device
// checks: ~120 ns).  perf on a 2-vCPU Xeon (AMX), Large bf16 b1 on 1 thread: 6.5% of the forward in that
// wrapper, against 20% in the AMX kernels themselves.  Here the tile configuration is loaded once per
// parallel chunk and each tile is a handful of tile loads and dot products.
//
// The tiles: C0 and C1 (16 output pixels x 16 channels each, fp32 or int32), A (16 pixels x 64 bytes of x:
// 32 bf16 or 64 uint8 input channels), B0 and B1 (16 groups of input channels x 16 output channels, in the
// weight's VNNI groups as pack_pointwise_weight stores them: pairs of bf16, fours of int8), and for the
// input channels left over a tail A and tail B0/B1 configured to exactly that width: no read past a row of
// x or past a weight block, and no padding.
#pragma once

#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

// (CPUBLAS_BRGEMM_BF16BF16F32: torch 2.7 or later, whose cpublas has could_pack and brgemm_release.)
#if defined(CPU_CAPABILITY_AVX512) && defined(__linux__) && defined(__x86_64__) && \
    defined(CPUBLAS_BRGEMM_BF16BF16F32) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define MNV3_HAS_AMX_TILES 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mnv3::amx {

#ifdef MNV3_HAS_AMX_TILES
constexpr int64_t kRows = 16;  // pixels per tile (the most an AMX tile holds)

// Per input dtype: the weight's, the accumulator's, and input channels per VNNI group.
template <typename X>
struct Types;
template <>
struct Types<c10::BFloat16> {
  using W = c10::BFloat16;
  using Acc = float;
  static constexpr int64_t kGroup = 2;
};
template <>
struct Types<uint8_t> {
  using W = int8_t;
  using Acc = int32_t;
  static constexpr int64_t kGroup = 4;
};
template <typename X>
constexpr int64_t kChunk = 64 / sizeof(X);  // input channels per dot product: a 64-byte tile row of x

// Linux hands out AMX tile state only to a process that asks (arch_prctl, kernel 5.16+); oneDNN asks
// too, but only once it runs an AMX kernel itself.
inline bool tile_permission() {
  static const bool granted = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtileData) == 0;
  }();
  return granted;
}

// palette 1: per tile, its row count and bytes per row.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The tile registers.  (Literal numbers: GCC's tile intrinsics paste them into the instruction text.)
#define MNV3_C0 0
#define MNV3_C1 1
#define MNV3_A 2
#define MNV3_B0 3
#define MNV3_B1 4
#define MNV3_TAIL_A 5
#define MNV3_TAIL_B0 6
#define MNV3_TAIL_B1 7

// Loads the configuration for inputs of K channels of X (the tail tiles sized to what whole chunks leave).
template <typename X>
__attribute__((target("amx-tile"))) inline void configure(int64_t K) {
  TileConfig cfg;
  const int64_t tail = K % kChunk<X>;
  for (int t : {MNV3_C0, MNV3_C1, MNV3_A, MNV3_B0, MNV3_B1}) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = 64;
  }
  if (tail) {
    cfg.rows[MNV3_TAIL_A] = kRows;
    cfg.colsb[MNV3_TAIL_A] = static_cast<uint16_t>(tail * sizeof(X));
    cfg.rows[MNV3_TAIL_B0] = cfg.rows[MNV3_TAIL_B1] = static_cast<uint8_t>(tail / Types<X>::kGroup);
    cfg.colsb[MNV3_TAIL_B0] = cfg.colsb[MNV3_TAIL_B1] = 64;
  }
  // (Not _tile_loadconfig: GCC's declares only 8 of the 64 bytes as read, and the stores to the rest of
  // cfg may be dropped as dead.)
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

// Releases the tiles, and tells ATen's brgemm that its configuration is gone (it keeps the last one it
// loaded per thread and would otherwise run on ours).
__attribute__((target("amx-tile"))) inline void release() {
  _tile_release();
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
}

// c[16][32] (rows 32 apart) = x[16][K] (rows K apart) @ the packed block w (K / group, 32, group).
template <typename X>
__attribute__((target("amx-tile,amx-bf16,amx-int8"))) inline void rows16(const X* x, int64_t K,
                                                                          const typename Types<X>::W* w,
                                                                          typename Types<X>::Acc* c) {
  constexpr int64_t kWRow = 128;  // bytes per group of input channels in a block: 32 channels x 4 bytes
  constexpr int64_t kChunkX = kChunk<X>;
  const int64_t x_stride = K * sizeof(X);
// One dot product step: x's columns at xp and the block's rows at wk into tiles A, B0, B1, then C0 += A B0
// and C1 += A B1.  (A macro: the tile numbers must be literals.)
#define MNV3_AMX_STEP(A, B0, B1, xp, wk)                                      \
  _tile_loadd(A, xp, x_stride);                                               \
  _tile_loadd(B0, wk, kWRow);                                                 \
  _tile_loadd(B1, (wk) + 16 * Types<X>::kGroup, kWRow);                       \
  if constexpr (std::is_same_v<X, uint8_t>) {                                 \
    _tile_dpbusd(MNV3_C0, A, B0);                                             \
    _tile_dpbusd(MNV3_C1, A, B1);                                             \
  } else {                                                                    \
    _tile_dpbf16ps(MNV3_C0, A, B0);                                           \
    _tile_dpbf16ps(MNV3_C1, A, B1);                                           \
  }
  _tile_zero(MNV3_C0);
  _tile_zero(MNV3_C1);
  const int64_t full = K / kChunkX * kChunkX;
  for (int64_t k = 0; k < full; k += kChunkX) {  // (group k / kGroup: that row of the block, 32 * kGroup elements)
    MNV3_AMX_STEP(MNV3_A, MNV3_B0, MNV3_B1, x + k, w + k * 32)
  }
  if (full < K) {
    MNV3_AMX_STEP(MNV3_TAIL_A, MNV3_TAIL_B0, MNV3_TAIL_B1, x + full, w + full * 32)
  }
#undef MNV3_AMX_STEP
  _tile_stored(MNV3_C0, c, 32 * 4);
  _tile_stored(MNV3_C1, c + 16, 32 * 4);
}

// acc[rows][32] = x rows [m0, m0 + rows) @ the block w, for M >= 16 pixels in all.  A partial last group
// of rows is computed as the 16 rows that end at M (reading no row past x) and the wanted ones copied out.
template <typename X>
inline void tile(const X* x, int64_t M, int64_t K, int64_t m0, int64_t rows, const typename Types<X>::W* w,
                 typename Types<X>::Acc* acc) {
  int64_t g = 0;
  for (; g + kRows <= rows; g += kRows) rows16(x + (m0 + g) * K, K, w, acc + g * 32);
  if (g < rows) {
    alignas(64) typename Types<X>::Acc last[kRows * 32];
    const int64_t first = M - kRows;  // >= m0 + g - kRows + (rows - g): the group overlaps the one before
    rows16(x + first * K, K, w, last);
    const int64_t skip = m0 + g - first;
    std::memcpy(acc + g * 32, last + skip * 32, (rows - g) * 32 * sizeof(last[0]));
  }
}
#undef MNV3_C0
#undef MNV3_C1
#undef MNV3_A
#undef MNV3_B0
#undef MNV3_B1
#undef MNV3_TAIL_A
#undef MNV3_TAIL_B0
#undef MNV3_TAIL_B1
#endif

// Whether the tiles run here for inputs of X: AMX-BF16 or AMX-INT8 (ATen's test, which also gates the
// packing), the tile permission, and MNV3_CPU_AMX_TILES unset or not "0" (0: ATen's brgemm, for comparisons).
template <typename X>
inline bool tiles_enabled() {
#ifdef MNV3_HAS_AMX_TILES
  static const bool enabled = [] {
    const char* env = std::getenv("MNV3_CPU_AMX_TILES");
    if (env && std::strcmp(env, "0") == 0) return false;
    return at::native::cpublas::could_pack(std::is_same_v<X, uint8_t> ? at::kChar : at::kBFloat16) &&
           tile_permission();
  }();
  return enabled;
#else
  return false;
#endif
}

}  // namespace mnv3::amx
