// LEViT's cosine attention inside non-overlapping 8x8 windows, for inference, read from and written
// to channels_last (B, H, W, C) float32 or bfloat16 maps: no window copies, no separate
// normalisation. For each (image, window, head): q and k normalised in float32 (q times the head's
// scale), logits q k^T and their softmax in float32, the product with v accumulated in float32.
// Windows cut by the map's border hold fewer tokens; the missing keys take no part (as the masked
// keys of the padded map in network/levit.py).
//
// Built on first use by network/kernels.py; torch.ops.levit_kernels.window_attention.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vec.h"

namespace {

using namespace levit_kernels;

constexpr int WS = 8;             // window side
constexpr int N = WS * WS;        // tokens a window at most
constexpr int NV = N / VL;        // vectors of a row of logits
constexpr float NORM_EPS = 1e-12f;  // as F.normalize

inline vf broadcast(float s) { return vf{} + s; }

// exp for x <= 0 (logits minus their row's maximum): Cody-Waite reduction by ln 2 and the Cephes
// polynomial, about one unit in the last place; below -87 it returns 2^-126 * exp(r) (never used
// for a masked key, which is set to 0).
inline vf exp_nonpositive(vf x) {
  const vf lo = broadcast(-87.0f);
  x = x < lo ? lo : x;
  const vf t = x * 1.44269504088896341f;
  const vi n = __builtin_convertvector(t - 0.5f, vi);  // round to nearest for t <= 0 (truncation toward 0)
  const vf nf = __builtin_convertvector(n, vf);
  vf r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  vf p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * r * r + r + 1.0f;
  const vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < VL; ++l) s += v[l];
  return s;
}

inline float hmax(vf v) {
  float m = v[0];
  for (int l = 1; l < VL; ++l) m = std::max(m, v[l]);
  return m;
}

struct Shape {
  int64_t B, H, W, C, heads;
};

// DV vectors (DV * VL channels) a head.
template <int DV, typename T>
void attend(const T* q, const T* k, const T* v, const float* scale, T* out, const Shape& s) {
  constexpr int D = DV * VL;
  constexpr int R = DV <= 6 ? 4 : DV <= 8 ? 2 : 1;  // query rows at once in the product with v
  const int64_t nh = (s.H + WS - 1) / WS, nw = (s.W + WS - 1) / WS;
  const int64_t tasks = s.B * nh * nw * s.heads;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qn(N * D), kt(D * N), probs(R * N);
    int64_t offset[N];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task % s.heads, window = task / s.heads;
      const int64_t b = window / (nh * nw), wy = window / nw % nh, wx = window % nw;
      const int64_t y0 = wy * WS, x0 = wx * WS;
      const int64_t rows = std::min<int64_t>(WS, s.H - y0), cols = std::min<int64_t>(WS, s.W - x0);
      const int n = static_cast<int>(rows * cols);
      for (int t = 0; t < n; ++t) offset[t] = ((b * s.H + y0 + t / cols) * s.W + x0 + t % cols) * s.C + head * D;
      // q rows normalised and scaled; k normalised and transposed (kt[c * N + token]), absent tokens 0
      for (int t = 0; t < n; ++t) {
        vf qv[DV], kv[DV], qs = {}, ks = {};
        for (int d = 0; d < DV; ++d) {
          qv[d] = load(q + offset[t] + d * VL);
          kv[d] = load(k + offset[t] + d * VL);
          qs += qv[d] * qv[d];
          ks += kv[d] * kv[d];
        }
        const float qi = scale[head] / std::max(std::sqrt(hsum(qs)), NORM_EPS);
        const float ki = 1.0f / std::max(std::sqrt(hsum(ks)), NORM_EPS);
        for (int d = 0; d < DV; ++d) {
          store(qn.data() + t * D + d * VL, qv[d] * qi);
          const vf kn = kv[d] * ki;
          for (int l = 0; l < VL; ++l) kt[(d * VL + l) * N + t] = kn[l];
        }
      }
      for (int c = 0; c < D; ++c)
        for (int t = n; t < N; ++t) kt[c * N + t] = 0.f;
      vi valid[NV];  // lanes of real keys
      for (int j = 0; j < NV; ++j)
        for (int l = 0; l < VL; ++l) valid[j][l] = j * VL + l < n ? -1 : 0;
      for (int i0 = 0; i0 < n; i0 += R) {
        const int m = std::min(R, n - i0);
        // logits of rows i0..i0+m-1, then their softmax into probs
        vf acc[R][NV] = {};
        for (int c = 0; c < D; ++c) {
          vf kc[NV];
          for (int j = 0; j < NV; ++j) kc[j] = load(kt.data() + c * N + j * VL);
          for (int r = 0; r < R; ++r) {
            if (r >= m) break;
            const vf qb = broadcast(qn[(i0 + r) * D + c]);
            for (int j = 0; j < NV; ++j) acc[r][j] += qb * kc[j];
          }
        }
        for (int r = 0; r < m; ++r) {
          if (n < N)  // a window cut by the border: the absent keys out of the maximum
            for (int j = 0; j < NV; ++j) acc[r][j] = valid[j] ? acc[r][j] : broadcast(-INFINITY);
          vf mv = acc[r][0];
          for (int j = 1; j < NV; ++j) mv = mv > acc[r][j] ? mv : acc[r][j];
          const vf mx = broadcast(hmax(mv));
          vf sum = {};
          for (int j = 0; j < NV; ++j) {
            vf e = exp_nonpositive(acc[r][j] - mx);
            if (n < N) e = valid[j] ? e : vf{};
            acc[r][j] = e;
            sum += e;
          }
          const float inv = 1.0f / hsum(sum);
          for (int j = 0; j < NV; ++j) store(probs.data() + r * N + j * VL, acc[r][j] * inv);
        }
        // out rows = probs @ v, v read in place from the map
        vf o[R][DV] = {};
        for (int j = 0; j < n; ++j) {
          vf vj[DV];
          for (int d = 0; d < DV; ++d) vj[d] = load(v + offset[j] + d * VL);
          for (int r = 0; r < R; ++r) {
            if (r >= m) break;
            const vf p = broadcast(probs[r * N + j]);
            for (int d = 0; d < DV; ++d) o[r][d] += p * vj[d];
          }
        }
        for (int r = 0; r < m; ++r)
          for (int d = 0; d < DV; ++d) store(out + offset[i0 + r] + d * VL, o[r][d]);
      }
    }
  });
}

template <typename T>
void dispatch(const T* q, const T* k, const T* v, const float* scale, T* out, const Shape& s, int64_t dv) {
  switch (dv) {
    case 1: return attend<1>(q, k, v, scale, out, s);
    case 2: return attend<2>(q, k, v, scale, out, s);
    case 3: return attend<3>(q, k, v, scale, out, s);
    case 4: return attend<4>(q, k, v, scale, out, s);
    case 6: return attend<6>(q, k, v, scale, out, s);
    case 8: return attend<8>(q, k, v, scale, out, s);
    case 12: return attend<12>(q, k, v, scale, out, s);
    case 16: return attend<16>(q, k, v, scale, out, s);
    case 24: return attend<24>(q, k, v, scale, out, s);
    default: TORCH_CHECK(false, "window_attention: ", dv * VL, " channels a head is not offered");
  }
}

at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& scale,
                            int64_t heads, int64_t window) {
  TORCH_CHECK(window == WS, "window_attention: window ", WS, ", got ", window);
  TORCH_CHECK(q.dim() == 4 && q.device().is_cpu(), "window_attention: 4-D CPU maps, got ", q.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "window_attention: float32 or bfloat16, got ", q.scalar_type());
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() &&
                    t->is_contiguous(at::MemoryFormat::ChannelsLast),
                "window_attention: q, k and v must be channels_last maps of one shape and dtype");
  const int64_t C = q.size(1);
  TORCH_CHECK(heads > 0 && C % heads == 0 && (C / heads) % VL == 0,
              "window_attention: channels a head must be a multiple of ", VL, ", got ", C, " / ", heads);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == heads,
              "window_attention: one float32 scale a head");
  const Shape s{q.size(0), q.size(2), q.size(3), C, heads};
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t dv = C / heads / VL;
  if (q.scalar_type() == at::kFloat) {
    dispatch(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), scale.data_ptr<float>(),
             out.data_ptr<float>(), s, dv);
  } else {
    using bf = c10::BFloat16;
    dispatch(q.data_ptr<bf>(), k.data_ptr<bf>(), v.data_ptr<bf>(), scale.data_ptr<float>(), out.data_ptr<bf>(), s,
             dv);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(levit_kernels, m) {
  m.def("window_attention(Tensor q, Tensor k, Tensor v, Tensor scale, int heads, int window) -> Tensor");
  m.impl("window_attention", c10::DispatchKey::CPU, TORCH_FN(window_attention));
}
