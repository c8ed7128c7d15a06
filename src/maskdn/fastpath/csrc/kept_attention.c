/* Attention of windows over their kept tokens: the fused CPU kernel behind maskdn.fastpath.kernels.
 *
 * One call handles windows [w0, w1) of a group of b windows, all heads, in the layouts the model
 * already has, so no permuted copies are made around it:
 *   qkv     [b, K, 3C]       projected kept tokens of each window (rows past a window's count are
 *                            padding: zeroed tokens, so their q, k, v are the qkv bias)
 *   order   [b, K]           window position (0..N-1) of each of those rows, distinct per window
 *   bias    [3C]             qkv bias: b_q is the query of every other position; (b_k, b_v) is the
 *                            folded masked key, appended as key K
 *   table   [heads, R, N]    rows of position bias for every query: each window reads the rows of its
 *                            keys (-inf everywhere: a padding key), so no [heads, b, K+1, N] logits
 *                            tensor is ever gathered, nor its gradient scattered back
 *   rows    [b, K+1]         the table row of each key of each window (the folded key last)
 *   out     [b, N, C]        out: attention output before the output projection
 * Scores are laid out keys x queries, so every inner loop runs over the N (= 64) queries of a
 * window and vectorises; the softmax reduces across rows. Nothing of size [heads, b, K+1, N] is
 * stored: the backward recomputes each window's probabilities. C with GCC's vector extension (also
 * Clang's), compiled on first use by maskdn/fastpath/kernels.py with -O3 -march=native; threads are
 * the caller's (it splits [0, b)).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* e^x: Cody-Waite reduction and a degree-6 polynomial (relative error ~2e-7) that gcc vectorises;
 * x below -87 (e^x under float's normal range, -inf included) gives exactly 0. */
INLINE float exp_approx(float x) {
  const float lo = -87.0f, hi = 88.0f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  float n = nearbyintf(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  return x < lo ? 0.0f : poly * two_n;
}

/* Queries [d][N] (b_q everywhere, the kept rows' own queries at their positions), keys [K+1][d] and
 * values [K+1][d] of window w, head h. */
INLINE void load_window(const float *qkv, const int64_t *order, const float *bias, int64_t w, int64_t h,
                        int64_t K, int64_t N, int64_t C, int64_t d, float *qT, float *keys, float *vals) {
  const float *bq = bias + h * d, *bk = bias + C + h * d, *bv = bias + 2 * C + h * d;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t n = 0; n < N; ++n) qT[i * N + n] = bq[i];
  for (int64_t k = 0; k < K; ++k) {
    const float *row = qkv + (w * K + k) * 3 * C + h * d;
    const int64_t pos = order[w * K + k];
    for (int64_t i = 0; i < d; ++i) {
      qT[i * N + pos] = row[i];
      keys[k * d + i] = row[C + i];
      vals[k * d + i] = row[2 * C + i];
    }
  }
  for (int64_t i = 0; i < d; ++i) {
    keys[K * d + i] = bk[i];
    vals[K * d + i] = bv[i];
  }
}

typedef float v8 __attribute__((vector_size(32), aligned(4))); /* 8 floats, any float's alignment */

/* out[0..N) = (init or 0) + Σ_r (coef[r·stride]·scale) · rows[r·N + 0..N): a combination of n rows of
 * N queries, the loop all the products of a window's attention run on. With N = 64 the 64 sums stay
 * in eight vector registers across the rows instead of being loaded and stored for every row; the
 * arithmetic, and its order, is that of the plain loop. */
INLINE void combine(float *out, const float *init, const float *rows, int64_t n, const float *coef, int64_t stride,
                    float scale, int64_t N) {
  if (N == 64) {
    v8 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = init ? *(const v8 *)(init + 8 * j) : (v8){0};
    for (int64_t r = 0; r < n; ++r) {
      const float c = coef[r * stride] * scale;
      for (int j = 0; j < 8; ++j) acc[j] += c * *(const v8 *)(rows + r * 64 + 8 * j);
    }
    for (int j = 0; j < 8; ++j) *(v8 *)(out + 8 * j) = acc[j];
    return;
  }
  for (int64_t q = 0; q < N; ++q) out[q] = init ? init[q] : 0.0f;
  for (int64_t r = 0; r < n; ++r) {
    const float c = coef[r * stride] * scale;
    for (int64_t q = 0; q < N; ++q) out[q] += c * rows[r * N + q];
  }
}

/* P [K+1][N] of window w, head h: scores of every key for every query plus its table row, softmax
 * over the keys. Recomputed in the backward rather than stored: writing it out and reading it back
 * ([heads, b, K+1, N], ~7 MB per group of windows) costs more memory traffic than the arithmetic. */
INLINE void attention_probs(const float *qT, const float *keys, const float *table, const int64_t *rows, int64_t w,
                            int64_t h, int64_t K1, int64_t N, int64_t R, int64_t d, float scale, float *pw) {
  float mx[N], sum[N]; /* N is a constant 64 in the common case: registers */
  for (int64_t n = 0; n < N; ++n) mx[n] = -INFINITY, sum[n] = 0.0f;
  for (int64_t k = 0; k < K1; ++k) {
    float *pk = pw + k * N;
    combine(pk, table + (h * R + rows[w * K1 + k]) * N, qT, d, keys + k * d, 1, scale, N);
    for (int64_t n = 0; n < N; ++n) mx[n] = pk[n] > mx[n] ? pk[n] : mx[n];
  }
  for (int64_t k = 0; k < K1; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const float e = exp_approx(pw[k * N + n] - mx[n]);
      pw[k * N + n] = e;
      sum[n] += e;
    }
  for (int64_t n = 0; n < N; ++n) sum[n] = 1.0f / sum[n];
  for (int64_t k = 0; k < K1; ++k)
    for (int64_t n = 0; n < N; ++n) pw[k * N + n] *= sum[n];
}

INLINE void forward_window(const float *qkv, const int64_t *order, const float *bias, const float *table,
                           const int64_t *rows, float *out, int64_t w, int64_t K, int64_t N, int64_t R, int64_t heads,
                           int64_t d, float scale, float *scratch) {
  const int64_t C = heads * d, K1 = K + 1;
  float *qT = scratch, *keys = qT + d * N, *vals = keys + K1 * d, *pw = vals + K1 * d, *o = pw + K1 * N;
  for (int64_t h = 0; h < heads; ++h) {
    load_window(qkv, order, bias, w, h, K, N, C, d, qT, keys, vals);
    attention_probs(qT, keys, table, rows, w, h, K1, N, R, d, scale, pw);
    for (int64_t i = 0; i < d; ++i) combine(o + i * N, 0, pw, K1, vals + i, d, 1.0f, N);
    float *ow = out + w * N * C + h * d;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < d; ++i) ow[n * C + i] = o[i * N + n];
  }
}

/* For a head width of 8: out[k][0..8) = scale · Σ_n a[k][n] · m[n·ldm + 0..8) for the K+1 keys (a
 * [K+1][N]), rows k < K into out (row stride ostride), the last added into last[0..8). Each key's 8
 * sums run in the 8 lanes of one vector, four keys at a time, so that no sum is reduced across lanes,
 * as the per-(key, dim) reductions over the N queries that other widths use must (docs/performance.md). */
INLINE void key_products8(const float *a, const float *m, int64_t ldm, float *out, int64_t ostride, float *last,
                          int64_t K, int64_t N, float scale) {
  const int64_t K1 = K + 1;
  for (int64_t k = 0; k < K1; k += 4) {
    const int64_t nk = K1 - k < 4 ? K1 - k : 4;
    /* past the last key a row repeats a0: read, never written */
    const float *a0 = a + k * N, *a1 = a0 + (nk > 1) * N, *a2 = a0 + (nk > 2) * 2 * N, *a3 = a0 + (nk > 3) * 3 * N;
    v8 s[4] = {{0}, {0}, {0}, {0}};
    for (int64_t n = 0; n < N; ++n) {
      const v8 row = *(const v8 *)(m + n * ldm);
      s[0] += a0[n] * row;
      s[1] += a1[n] * row;
      s[2] += a2[n] * row;
      s[3] += a3[n] * row;
    }
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t i = 0; i < 8; ++i) {
        if (k + j < K) out[(k + j) * ostride + i] = s[j][i] * scale;
        else last[i] += s[j][i] * scale;
      }
  }
}

INLINE void backward_window(const float *grad, const float *qkv, const int64_t *order, const float *bias,
                            const float *table, const int64_t *rows, float *d_qkv, float *d_bias, float *d_table,
                            int64_t w, int64_t K, int64_t N, int64_t R, int64_t heads, int64_t d, float scale,
                            float *scratch) {
  const int64_t C = heads * d, K1 = K + 1;
  float *qT = scratch, *keys = qT + d * N, *vals = keys + K1 * d, *gT = vals + K1 * d, *dq = gT + d * N;
  float *dP = dq + d * N, *pw = dP + K1 * N, *qN = pw + K1 * N; /* [K+1][N] each; qN [N][d] */
  float rowdot[N];
  for (int64_t h = 0; h < heads; ++h) {
    load_window(qkv, order, bias, w, h, K, N, C, d, qT, keys, vals);
    attention_probs(qT, keys, table, rows, w, h, K1, N, R, d, scale, pw);
    const float *gw = grad + w * N * C + h * d;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < d; ++i) gT[i * N + n] = gw[n * C + i];
    float *dk_out = d_qkv + w * K * 3 * C + C + h * d, *dv_out = dk_out + C;
    /* dP = V·G (each key's row over the queries) and Σ_k P·dP per query */
    for (int64_t n = 0; n < N; ++n) rowdot[n] = 0.0f;
    for (int64_t k = 0; k < K1; ++k) {
      combine(dP + k * N, 0, gT, d, vals + k * d, 1, 1.0f, N);
      for (int64_t n = 0; n < N; ++n) rowdot[n] += pw[k * N + n] * dP[k * N + n];
    }
    /* dS = P·(dP − Σ P·dP), in place of dP; it is also the gradient of the key's table row */
    for (int64_t k = 0; k < K1; ++k) {
      const float *pk = pw + k * N;
      float *ds = dP + k * N, *dt = d_table + (h * R + rows[w * K1 + k]) * N;
      for (int64_t n = 0; n < N; ++n) {
        ds[n] = pk[n] * (ds[n] - rowdot[n]);
        dt[n] += ds[n];
      }
    }
    /* dQ = scale · Kᵀ·dS, per head dim over the keys */
    for (int64_t i = 0; i < d; ++i) combine(dq + i * N, 0, dP, K1, keys + i, d, scale, N);
    /* dV = P·G and dK = scale · dS·Q: the folded key's go to the bias */
    if (d == 8) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < 8; ++i) qN[n * 8 + i] = qT[i * N + n];
      key_products8(pw, gw, C, dv_out, 3 * C, d_bias + 2 * C + h * d, K, N, 1.0f);
      key_products8(dP, qN, 8, dk_out, 3 * C, d_bias + C + h * d, K, N, scale);
    } else {
      for (int64_t k = 0; k < K1; ++k)
        for (int64_t i = 0; i < d; ++i) {
          float sv = 0.0f, sk = 0.0f;
#pragma omp simd reduction(+ : sv, sk)
          for (int64_t n = 0; n < N; ++n) {
            sv += gT[i * N + n] * pw[k * N + n];
            sk += qT[i * N + n] * dP[k * N + n];
          }
          if (k < K) dv_out[k * 3 * C + i] = sv, dk_out[k * 3 * C + i] = sk * scale;
          else d_bias[2 * C + h * d + i] += sv, d_bias[C + h * d + i] += sk * scale;
        }
    }
    /* dQ: the kept rows' queries get their positions' gradient, b_q every other position's */
    float *dq_out = d_qkv + w * K * 3 * C + h * d;
    for (int64_t i = 0; i < d; ++i) {
      float total = 0.0f;
#pragma omp simd reduction(+ : total)
      for (int64_t n = 0; n < N; ++n) total += dq[i * N + n];
      for (int64_t k = 0; k < K; ++k) {
        const float g = dq[i * N + order[w * K + k]];
        dq_out[k * 3 * C + i] = g;
        total -= g;
      }
      d_bias[h * d + i] += total;
    }
  }
}

static int64_t scratch_floats(int64_t K, int64_t N, int64_t d) { return 4 * d * N + 2 * (K + 1) * d + 2 * (K + 1) * N; }

/* Forward of windows [w0, w1); returns 0, or -1 when out of memory. */
int kept_attention_forward(const float *qkv, const int64_t *order, const float *bias, const float *table,
                           const int64_t *rows, float *out, int64_t w0, int64_t w1, int64_t K, int64_t N, int64_t R,
                           int64_t heads, int64_t d, float scale) {
  float *scratch = malloc(sizeof(float) * scratch_floats(K, N, d));
  if (!scratch) return -1;
  for (int64_t w = w0; w < w1; ++w) {
    if (N == 64) forward_window(qkv, order, bias, table, rows, out, w, K, 64, R, heads, d, scale, scratch);
    else forward_window(qkv, order, bias, table, rows, out, w, K, N, R, heads, d, scale, scratch);
  }
  free(scratch);
  return 0;
}

/* Backward of windows [w0, w1): writes their rows of d_qkv; adds into d_bias [3C] and d_table
 * [heads, R, N], which the caller gives each thread its own of (windows share table rows). */
int kept_attention_backward(const float *grad, const float *qkv, const int64_t *order, const float *bias,
                            const float *table, const int64_t *rows, float *d_qkv, float *d_bias, float *d_table,
                            int64_t w0, int64_t w1, int64_t K, int64_t N, int64_t R, int64_t heads, int64_t d,
                            float scale) {
  float *scratch = malloc(sizeof(float) * scratch_floats(K, N, d));
  if (!scratch) return -1;
  for (int64_t w = w0; w < w1; ++w) {
    if (N == 64)
      backward_window(grad, qkv, order, bias, table, rows, d_qkv, d_bias, d_table, w, K, 64, R, heads, d, scale, scratch);
    else
      backward_window(grad, qkv, order, bias, table, rows, d_qkv, d_bias, d_table, w, K, N, R, heads, d, scale, scratch);
  }
  free(scratch);
  return 0;
}
