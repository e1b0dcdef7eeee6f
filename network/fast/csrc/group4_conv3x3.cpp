// 3x3 convolution with groups of 4 input and 4 output channels (LEViT's q, k, v, v_spe, the MLP's
// local enhancement and the skip's strided conv), padding 1, stride 1 or 2, over channels_last
// float32 or bfloat16 maps, with the bias, an optional residual sum and an optional ReLU applied
// before the store. oneDNN runs these convolutions at a small fraction of the CPU's peak (each
// output needs only 36 multiply-adds, too few for its matrix kernels); here a vector of channels
// holds whole groups (a group is one 128-bit lane), so an output is accumulated by multiplying the
// input vector and its three in-group rotations by packed weights, eight output pixels at a time
// in registers.
//
// Packed weights, (9, 4, C) float32: wp[kh * 3 + kw][r][c] = weight[c][(c % 4 + r) % 4][kh][kw],
// so that out[c] += wp[tap][r][c] * in[tap][rotate_r(in)][c], with rotate_r(v)[c] = v[c - c % 4 + (c % 4 + r) % 4].
//
// Built on first use by network/kernels.py; registered as torch.ops.levit_kernels.group4_conv3x3.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "vec.h"

namespace {

using namespace levit_kernels;

// lane l of rotate<R>(v) is v[l - l % 4 + (l % 4 + R) % 4]
template <int R>
inline vf rotate(vf v) {
  if constexpr (R == 0) {
    return v;
  } else {
    vi mask;
    for (int l = 0; l < VL; ++l) mask[l] = (l & ~3) | ((l + R) & 3);
#if defined(__clang__)
    vf out;
    for (int l = 0; l < VL; ++l) out[l] = v[mask[l]];
    return out;
#else
    return __builtin_shuffle(v, mask);
#endif
  }
}

struct Args {
  int64_t H, W, C, Ho, Wo;
  bool relu;
};

// P output pixels of one row, VL channels starting at c0, stride S.
template <int S, int P, typename T>
inline void block(const T* x, const float* wp, const float* bias, const T* add, T* out, int64_t b, int64_t oh,
                  int64_t ow0, int64_t c0, const Args& a) {
  constexpr int J = (P - 1) * S + 3;  // input pixels the P outputs read in one row
  const vf zero = {};
  vf acc[P];
  const vf bv = load(bias + c0);
  for (int p = 0; p < P; ++p) acc[p] = bv;
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh * S - 1 + kh;
    if (ih < 0 || ih >= a.H) continue;
    const T* row = x + ((b * a.H + ih) * a.W) * a.C + c0;
    vf in[J];
    const int64_t iw0 = ow0 * S - 1;
    for (int j = 0; j < J; ++j) {
      const int64_t iw = iw0 + j;
      in[j] = (iw >= 0 && iw < a.W) ? load(row + iw * a.C) : zero;
    }
    const float* w = wp + (kh * 3) * 4 * a.C + c0;
    auto tap = [&](auto r) {
      constexpr int R = decltype(r)::value;
      for (int j = 0; j < J; ++j) {
        const vf v = rotate<R>(in[j]);
        for (int kw = 0; kw < 3; ++kw) {
          const int d = j - kw;
          if (d < 0 || d % S != 0 || d / S >= P) continue;
          acc[d / S] += load(w + (kw * 4 + R) * a.C) * v;
        }
      }
    };
    tap(std::integral_constant<int, 0>{});
    tap(std::integral_constant<int, 1>{});
    tap(std::integral_constant<int, 2>{});
    tap(std::integral_constant<int, 3>{});
  }
  const int64_t o = ((b * a.Ho + oh) * a.Wo + ow0) * a.C + c0;
  for (int p = 0; p < P; ++p) {
    vf v = acc[p];
    if (add != nullptr) v += load(add + o + p * a.C);
    if (a.relu) v = v > zero ? v : zero;
    store(out + o + p * a.C, v);
  }
}

#if defined(__AVX512BF16__)
// bfloat16 maps on a CPU with AVX512-BF16: each vdpbf16ps adds the products of two input channels
// of the group (a bfloat16 pair a lane) to a float32 output lane, so a tap takes two instructions
// instead of four multiply-adds, with the weights in bfloat16 (as the model's, once cast).
// wq[(tap * 2 + r) * C + c]: the pair (wp[tap][2r][c], wp[tap][2r + 1][c]), low half first;
// pairs[r] gathers the matching input pair for every lane from the 16 loaded channels.
struct Pairs {
  __m512i idx[2];
  Pairs() {
    alignas(64) int16_t w[2][32];
    for (int r = 0; r < 2; ++r)
      for (int k = 0; k < 32; ++k) {
        const int l = k / 2;
        w[r][k] = static_cast<int16_t>((l & ~3) | (((l & 3) + 2 * r + k % 2) & 3));
      }
    idx[0] = _mm512_load_si512(w[0]);
    idx[1] = _mm512_load_si512(w[1]);
  }
};

inline __m512 load_bf16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int S, int P>
inline void block_dot(const c10::BFloat16* x, const uint32_t* wq, const float* bias, const c10::BFloat16* add,
                      c10::BFloat16* out, int64_t b, int64_t oh, int64_t ow0, int64_t c0, const Args& a,
                      const Pairs& pairs) {
  constexpr int J = (P - 1) * S + 3;
  __m512 acc[P];
  const __m512 bv = _mm512_loadu_ps(bias + c0);
  for (int p = 0; p < P; ++p) acc[p] = bv;
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh * S - 1 + kh;
    if (ih < 0 || ih >= a.H) continue;
    const c10::BFloat16* row = x + ((b * a.H + ih) * a.W) * a.C + c0;
    __m512i in[J];
    const int64_t iw0 = ow0 * S - 1;
    for (int j = 0; j < J; ++j) {
      const int64_t iw = iw0 + j;
      in[j] = (iw >= 0 && iw < a.W)
                  ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + iw * a.C)))
                  : _mm512_setzero_si512();
    }
    const uint32_t* w = wq + (kh * 3) * 2 * a.C + c0;
    for (int r = 0; r < 2; ++r) {
      for (int j = 0; j < J; ++j) {
        const __m512bh v = (__m512bh)_mm512_permutexvar_epi16(pairs.idx[r], in[j]);
        for (int kw = 0; kw < 3; ++kw) {
          const int d = j - kw;
          if (d < 0 || d % S != 0 || d / S >= P) continue;
          acc[d / S] = _mm512_dpbf16_ps(acc[d / S], v, (__m512bh)_mm512_loadu_si512(w + (kw * 2 + r) * a.C));
        }
      }
    }
  }
  const int64_t o = ((b * a.Ho + oh) * a.Wo + ow0) * a.C + c0;
  for (int p = 0; p < P; ++p) {
    __m512 v = acc[p];
    if (add != nullptr) v = _mm512_add_ps(v, load_bf16(add + o + p * a.C));
    if (a.relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + o + p * a.C), (__m256i)_mm512_cvtneps_pbh(v));
  }
}
#endif

// Calls block.template operator()<P>(b, oh, ow, c0) over every output row, run of P = 8, 4 or 1
// pixels and channel vector, the rows shared out among torch's threads. The channel vectors are the
// inner loop, so a run reads and writes its pixels' channels in memory order (with the runs inner,
// float32 maps of 32-96 channels ran 1.7-2.6x slower: each pass strode over the row's pixels).
template <typename Block>
void for_each_block(int64_t B, const Args& a, const Block& block) {
  const int64_t work = a.Wo * a.C * 36;  // multiply-adds a row
  const int64_t grain = work >= 32768 ? 1 : (32768 + work - 1) / work;
  at::parallel_for(0, B * a.Ho, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / a.Ho, oh = r % a.Ho;
      int64_t ow = 0;
      for (; ow + 8 <= a.Wo; ow += 8)
        for (int64_t c0 = 0; c0 < a.C; c0 += VL) block.template operator()<8>(b, oh, ow, c0);
      for (; ow + 4 <= a.Wo; ow += 4)
        for (int64_t c0 = 0; c0 < a.C; c0 += VL) block.template operator()<4>(b, oh, ow, c0);
      for (; ow < a.Wo; ++ow)
        for (int64_t c0 = 0; c0 < a.C; c0 += VL) block.template operator()<1>(b, oh, ow, c0);
    }
  });
}

template <int S, typename T>
void run(const T* x, const float* wp, const float* bias, const T* add, T* out, int64_t B, const Args& a) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    std::vector<uint32_t> wq(18 * a.C);
    for (int tap = 0; tap < 9; ++tap)
      for (int r = 0; r < 2; ++r)
        for (int64_t c = 0; c < a.C; ++c) {
          const uint32_t lo = c10::BFloat16(wp[(tap * 4 + 2 * r) * a.C + c]).x;
          const uint32_t hi = c10::BFloat16(wp[(tap * 4 + 2 * r + 1) * a.C + c]).x;
          wq[(tap * 2 + r) * a.C + c] = lo | (hi << 16);
        }
    static const Pairs pairs;
    for_each_block(B, a, [&]<int P>(int64_t b, int64_t oh, int64_t ow, int64_t c0) {
      block_dot<S, P>(x, wq.data(), bias, add, out, b, oh, ow, c0, a, pairs);
    });
    return;
  }
#endif
  for_each_block(B, a, [&]<int P>(int64_t b, int64_t oh, int64_t ow, int64_t c0) {
    block<S, P>(x, wp, bias, add, out, b, oh, ow, c0, a);
  });
}

at::Tensor group4_conv3x3(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                          const std::optional<at::Tensor>& add, int64_t stride, bool relu) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), "group4_conv3x3: a 4-D CPU tensor, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "group4_conv3x3: float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "group4_conv3x3: a channels_last input");
  TORCH_CHECK(stride == 1 || stride == 2, "group4_conv3x3: stride 1 or 2, got ", stride);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C % VL == 0, "group4_conv3x3: channels a multiple of ", VL, ", got ", C);
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.is_contiguous() && packed.numel() == 36 * C,
              "group4_conv3x3: packed weights (9, 4, ", C, ") float32");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == C,
              "group4_conv3x3: a float32 bias of ", C);
  const Args a{H, W, C, (H - 1) / stride + 1, (W - 1) / stride + 1, relu};
  at::Tensor out = at::empty({B, C, a.Ho, a.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (add.has_value()) {
    TORCH_CHECK(add->sizes() == out.sizes() && add->scalar_type() == x.scalar_type() &&
                    add->is_contiguous(at::MemoryFormat::ChannelsLast),
                "group4_conv3x3: the sum's term must be a channels_last ", x.scalar_type(), " tensor of ",
                out.sizes());
  }
  auto go = [&](auto* xp, auto* ap, auto* op) {
    if (stride == 1)
      run<1>(xp, packed.data_ptr<float>(), bias.data_ptr<float>(), ap, op, B, a);
    else
      run<2>(xp, packed.data_ptr<float>(), bias.data_ptr<float>(), ap, op, B, a);
  };
  if (x.scalar_type() == at::kFloat) {
    go(x.data_ptr<float>(), add ? add->data_ptr<float>() : nullptr, out.data_ptr<float>());
  } else {
    using bf = c10::BFloat16;
    go(x.data_ptr<bf>(), add ? add->data_ptr<bf>() : nullptr, out.data_ptr<bf>());
  }
  return out;
}

// The weight gradient of a stride-1 group4_conv3x3 over float32 maps, for training: for every
// output pixel and tap, the output gradient times the input vector and its in-group rotations, so
// the result is in the packed layout (9, 4, C) of the forward's weights:
// gw[kh * 3 + kw][r][c] = sum over images and pixels of grad[c] * rotate_r(x at the tap)[c].
// Rows are shared out among torch's threads, each summing into its own buffer; the buffers are
// added in thread order (the same result for the same thread count).
at::Tensor group4_conv3x3_weight_grad(const at::Tensor& x, const at::Tensor& grad) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group4_conv3x3_weight_grad: a channels_last float32 CPU input, got ", x.sizes());
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == at::kFloat &&
                  grad.is_contiguous(at::MemoryFormat::ChannelsLast),
              "group4_conv3x3_weight_grad: a channels_last float32 gradient of ", x.sizes(), " (stride 1)");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C % VL == 0, "group4_conv3x3_weight_grad: channels a multiple of ", VL, ", got ", C);
  const int threads = at::get_num_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * 36 * C, 0.f);
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  const int64_t work = W * C * 36;  // multiply-adds a row
  const int64_t grain = work >= 32768 ? 1 : (32768 + work - 1) / work;
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    float* sum = partial.data() + static_cast<size_t>(at::get_thread_num()) * 36 * C;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, oh = row % H;
      for (int64_t c0 = 0; c0 < C; c0 += VL) {
        const float* g = gp + ((b * H + oh) * W) * C + c0;
        for (int kh = 0; kh < 3; ++kh) {
          const int64_t ih = oh - 1 + kh;
          if (ih < 0 || ih >= H) continue;
          const float* in = xp + ((b * H + ih) * W) * C + c0;
          vf acc[3][4] = {};
          for (int64_t ow = 0; ow < W; ++ow) {
            const vf gv = load(g + ow * C);
            for (int kw = 0; kw < 3; ++kw) {
              const int64_t iw = ow - 1 + kw;
              if (iw < 0 || iw >= W) continue;
              const vf v = load(in + iw * C);
              acc[kw][0] += gv * v;
              acc[kw][1] += gv * rotate<1>(v);
              acc[kw][2] += gv * rotate<2>(v);
              acc[kw][3] += gv * rotate<3>(v);
            }
          }
          for (int kw = 0; kw < 3; ++kw)
            for (int r = 0; r < 4; ++r) {
              float* dst = sum + ((kh * 3 + kw) * 4 + r) * C + c0;
              store(dst, load(dst) + acc[kw][r]);
            }
        }
      }
    }
  });
  at::Tensor out = at::zeros({9, 4, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  float* op = out.data_ptr<float>();
  for (int t = 0; t < threads; ++t)
    for (int64_t i = 0; i < 36 * C; ++i) op[i] += partial[static_cast<size_t>(t) * 36 * C + i];
  return out;
}

int64_t vector_lanes() { return VL; }

#if defined(__AVX512BF16__)
bool bfloat16_dot() { return true; }
#else
bool bfloat16_dot() { return false; }
#endif

}  // namespace

TORCH_LIBRARY(levit_kernels, m) {
  m.def("group4_conv3x3(Tensor x, Tensor packed, Tensor bias, Tensor? add, int stride, bool relu) -> Tensor");
  m.impl("group4_conv3x3", c10::DispatchKey::CPU, TORCH_FN(group4_conv3x3));
  m.def("group4_conv3x3_weight_grad(Tensor x, Tensor grad) -> Tensor");
  m.impl("group4_conv3x3_weight_grad", c10::DispatchKey::CPU, TORCH_FN(group4_conv3x3_weight_grad));
  m.def("vector_lanes() -> int", &vector_lanes);
  m.def("bfloat16_dot() -> bool", &bfloat16_dot);
}
