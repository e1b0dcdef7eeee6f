// Vector types and loads/stores shared by the kernels (GCC/Clang vector extensions: the compiler
// emits AVX512, AVX2 or SSE/NEON code from the same source, VL float32 lanes a vector).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace levit_kernels {

#if defined(__AVX512F__)
constexpr int VL = 16;
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline vf load(const c10::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  vu u = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

inline void store(c10::BFloat16* p, vf v) {
  // round to nearest even, as c10::BFloat16's conversion; a NaN stays a (quiet) NaN
  vu u;
  std::memcpy(&u, &v, sizeof(u));
  const vu nan = (vu)(v != v);
  u = ((u + 0x7FFFu + ((u >> 16) & 1u)) & ~nan) | ((u | 0x400000u) & nan);
  u >>= 16;
  vh h = __builtin_convertvector(u, vh);
  std::memcpy(p, &h, sizeof(h));
}

}  // namespace levit_kernels
