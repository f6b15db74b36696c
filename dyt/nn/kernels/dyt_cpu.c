/* Fused DyT forward/backward for CPU: y = w * tanh(alpha * x) + b.
 *
 * Plain C (no torch headers) so it builds in about a second with the system compiler; loaded with ctypes.
 * A tensor is viewed as [outer, C, inner]: channels-last is inner == 1 (rows of C channels), channels-first
 * is one plane of `inner` elements per (n, c). Math is fp32 whatever the storage type; reductions go
 * through double per thread. tanh is a rational minimax approximation, so the code vectorises: exact tanh
 * is what makes eager DyT compute-bound on CPU.
 *
 * One skeleton (threads, tiles, reductions: DEFINE_DYT) over "spans" of contiguous elements, which come in
 * two builds of the same math: AVX-512 intrinsics where the compiler targets AVX-512 F/BW/VL (16 lanes,
 * masked tails, the division by rcp14 + one Newton step: ~20 vector ops per 16 elements), and portable C
 * that the compiler vectorises itself (`omp simd`) everywhere else.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define DYT_AVX512 1
#endif

/* tanh(z) ~= z * P(z^2) / Q(z^2), fitted (minimax, differential correction) on [0, 9], highest power first.
 * Max abs error vs exact tanh, exhaustive over fp32 [0, 9]: 3.52e-7 (AVX-512 spans), 3.96e-7 (portable);
 * guaranteed and tested: 5e-7. */
static const float TP[5] = {1.0570305519763679e-08f, 1.8481570805306546e-05f, 0.0033613122068345547f,
                            0.13266316056251526f, 0.9999997019767761f};
static const float TQ[5] = {6.601831614716502e-07f, 0.00030695294844917953f, 0.025361044332385063f,
                            0.46599528193473816f, 1.0f};

/* NaN test on the bits: the library is built with -ffinite-math-only (for the reciprocal-based division), under
 * which `v != v` folds to false. */
static inline int is_nan(float v) { union { float f; uint32_t u; } c; c.f = v; return (c.u & 0x7fffffffu) > 0x7f800000u; }

/* portable tanh: |z| clamped at 9 (tanh is 1 - 3e-8 there), exactly +-1 from |v| >= 9 on, NaN kept */
static inline float tanh_rational(float v) {
    float z = v > 9.0f ? 9.0f : (v < -9.0f ? -9.0f : v);
    float s = z * z, p = TP[0], q = TQ[0];
    for (int k = 1; k < 5; k++) { p = p * s + TP[k]; q = q * s + TQ[k]; }
    float t = z * p / q;
    t = t > 1.0f ? 1.0f : (t < -1.0f ? -1.0f : t);
    t = v >= 9.0f ? 1.0f : (v <= -9.0f ? -1.0f : t);
    return is_nan(v) ? v : t;
}

/* storage types: bf16 by bit manipulation (round to nearest even, NaN kept quiet), fp16 by the compiler */
typedef float f32;
typedef uint16_t bf16;
static inline float bf16_load(bf16 h) { union { uint32_t u; float f; } v; v.u = (uint32_t)h << 16; return v.f; }
static inline bf16 bf16_store(float f) {
    union { uint32_t u; float f; } v; v.f = f;
    uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
    return is_nan(f) ? (bf16)((v.u >> 16) | 0x40u) : (bf16)rounded;
}
#define LD_f32(v) (v)
#define ST_f32(v) (v)
#define LD_bf16(v) bf16_load(v)
#define ST_bf16(v) bf16_store(v)
#ifdef __FLT16_MAX__
typedef _Float16 f16;
#define LD_f16(v) ((float)(v))
#define ST_f16(v) ((f16)(v))
int dyt_has_f16(void) { return 1; }
#else
int dyt_has_f16(void) { return 0; }
#endif

#ifdef DYT_AVX512
int dyt_simd_lanes(void) { return 16; }

/* tanh on 16 lanes. The clamp point 7.9704175 is the first fp32 where this arithmetic's rational reaches 1.0f
 * (and it stays below 1 before it), so |t| <= 1 and tanh(+-inf) = +-1 exactly with no clamp on the output;
 * tanh there is 1 - 2.4e-7. fixupimm puts NaN inputs back (token table: QNaN -> input, SNaN -> quieted
 * input); it is an instruction, not IEEE arithmetic, so -ffinite-math-only cannot fold it away. */
static inline __m512 tanh16(__m512 v) {
    const __m512 lim = _mm512_set1_ps(7.9704175f);
    __m512 z = _mm512_max_ps(_mm512_set1_ps(-7.9704175f), _mm512_min_ps(lim, v));
    __m512 s = _mm512_mul_ps(z, z), p = _mm512_set1_ps(TP[0]), q = _mm512_set1_ps(TQ[0]);
    for (int k = 1; k < 5; k++) {
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(TP[k]));
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(TQ[k]));
    }
    __m512 n = _mm512_mul_ps(z, p), r = _mm512_rcp14_ps(q);      /* r = 1/q to 2^-14 */
    __m512 t0 = _mm512_mul_ps(n, r);
    __m512 t = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(q, t0, n), t0);  /* Newton step on the quotient n/q */
    return _mm512_fixupimm_ps(t, v, _mm512_set1_epi32(0x21), 0);
}

static inline __mmask16 tail_mask(int64_t left) { return (__mmask16)((1u << left) - 1u); }

/* 16-lane loads and stores per storage type; `full` is a constant after inlining (masked only for tails) */
static inline __m512 vld_f32(const f32 *p, __mmask16 m, int full) {
    return full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
static inline void vst_f32(f32 *p, __m512 v, __mmask16 m, int full) {
    if (full) _mm512_storeu_ps(p, v); else _mm512_mask_storeu_ps(p, m, v);
}
static inline __m256i ld_half(const uint16_t *p, __mmask16 m, int full) {
    return full ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(m, p);
}
static inline void st_half(uint16_t *p, __m256i h, __mmask16 m, int full) {
    if (full) _mm256_storeu_si256((__m256i *)p, h); else _mm256_mask_storeu_epi16(p, m, h);
}
static inline __m512 vld_bf16(const bf16 *p, __mmask16 m, int full) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ld_half(p, m, full)), 16));
}
static inline void vst_bf16(bf16 *p, __m512 v, __mmask16 m, int full) {  /* as bf16_store, 16 at a time */
    __m512i u = _mm512_castps_si512(v), hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                                   _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
    st_half(p, _mm512_cvtepi32_epi16(r), m, full);
}
#ifdef __FLT16_MAX__
static inline __m512 vld_f16(const f16 *p, __mmask16 m, int full) {
    return _mm512_cvtph_ps(ld_half((const uint16_t *)p, m, full));
}
static inline void vst_f16(f16 *p, __m512 v, __mmask16 m, int full) {
    st_half((uint16_t *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), m, full);
}
#endif

/* Spans. Forward: y = w*tanh(alpha*x) + b over n elements, w/b per element (a channels-last row) or, with
 * w == NULL, the scalars wc/bc (a channels-first plane). Backward: dx = g*w*alpha*(1-t^2) with t recomputed
 * from x; returns sum g*w*x*(1-t^2) (d_alpha); adds g*t and g per element into fw/fb, or into *sw and *sb. */
#define DEFINE_SPANS(TX, TY)                                                                               \
static inline void fwd16_##TX##_##TY(const TX *x, TY *y, __m512 a, const float *w, const float *b,          \
                                     __m512 wc, __m512 bc, __mmask16 m, int full) {                        \
    __m512 t = tanh16(_mm512_mul_ps(a, vld_##TX(x, m, full)));                                             \
    __m512 wv = w ? vld_f32(w, m, full) : wc, bv = w ? vld_f32(b, m, full) : bc;                           \
    vst_##TY(y, _mm512_fmadd_ps(wv, t, bv), m, full);                                                      \
}                                                                                                          \
static inline void fwd_span_##TX##_##TY(const TX *x, TY *y, int64_t n, float alpha, const float *w,         \
                                        const float *b, float wc, float bc) {                              \
    const __m512 a = _mm512_set1_ps(alpha), wv = _mm512_set1_ps(wc), bv = _mm512_set1_ps(bc);              \
    int64_t i = 0;                                                                                         \
    for (; i + 16 <= n; i += 16)                                                                           \
        fwd16_##TX##_##TY(x + i, y + i, a, w ? w + i : w, w ? b + i : b, wv, bv, 0xffff, 1);               \
    if (i < n)                                                                                             \
        fwd16_##TX##_##TY(x + i, y + i, a, w ? w + i : w, w ? b + i : b, wv, bv, tail_mask(n - i), 0);     \
}                                                                                                          \
static inline __m512 bwd16_##TX##_##TY(const TY *g, const TX *x, TX *dx, __m512 a, const float *w,          \
                                       __m512 wc, float *fw, float *fb, __m512 *sw, __m512 *sb, __m512 da,  \
                                       __mmask16 m, int full) {                                            \
    __m512 xv = vld_##TX(x, m, full), gv = vld_##TY(g, m, full);  /* masked lanes load 0: add nothing */   \
    __m512 t = tanh16(_mm512_mul_ps(a, xv));                                                               \
    __m512 d = _mm512_fnmadd_ps(t, t, _mm512_set1_ps(1.0f));                                               \
    __m512 gwd = _mm512_mul_ps(_mm512_mul_ps(gv, w ? vld_f32(w, m, full) : wc), d);                        \
    vst_##TX(dx, _mm512_mul_ps(gwd, a), m, full);                                                          \
    if (fw) {                                                                                              \
        vst_f32(fw, _mm512_fmadd_ps(gv, t, vld_f32(fw, m, full)), m, full);                                \
        vst_f32(fb, _mm512_add_ps(gv, vld_f32(fb, m, full)), m, full);                                     \
    } else {                                                                                               \
        *sw = _mm512_fmadd_ps(gv, t, *sw);                                                                 \
        *sb = _mm512_add_ps(gv, *sb);                                                                      \
    }                                                                                                      \
    return _mm512_fmadd_ps(gwd, xv, da);                                                                   \
}                                                                                                          \
static inline float bwd_span_##TX##_##TY(const TY *g, const TX *x, TX *dx, int64_t n, float alpha,          \
                                         const float *w, float wc, float *fw, float *fb, float *sw,        \
                                         float *sb) {                                                      \
    const __m512 a = _mm512_set1_ps(alpha), wv = _mm512_set1_ps(wc);                                       \
    __m512 da = _mm512_setzero_ps(), vw = _mm512_setzero_ps(), vb = _mm512_setzero_ps();                   \
    int64_t i = 0;                                                                                         \
    for (; i + 16 <= n; i += 16)                                                                           \
        da = bwd16_##TX##_##TY(g + i, x + i, dx + i, a, w ? w + i : w, wv, fw ? fw + i : fw,               \
                               fw ? fb + i : fb, &vw, &vb, da, 0xffff, 1);                                 \
    if (i < n)                                                                                             \
        da = bwd16_##TX##_##TY(g + i, x + i, dx + i, a, w ? w + i : w, wv, fw ? fw + i : fw,               \
                               fw ? fb + i : fb, &vw, &vb, da, tail_mask(n - i), 0);                       \
    if (!fw) { *sw += _mm512_reduce_add_ps(vw); *sb += _mm512_reduce_add_ps(vb); }                         \
    return _mm512_reduce_add_ps(da);                                                                       \
}

#else  /* portable spans: the same contract, vectorised by the compiler */
int dyt_simd_lanes(void) { return 1; }

#define DEFINE_SPANS(TX, TY)                                                                               \
static inline void fwd_span_##TX##_##TY(const TX *x, TY *y, int64_t n, float alpha, const float *w,         \
                                        const float *b, float wc, float bc) {                              \
    if (w) {                                                                                               \
        _Pragma("omp simd")                                                                                \
        for (int64_t i = 0; i < n; i++) y[i] = ST_##TY(w[i] * tanh_rational(alpha * LD_##TX(x[i])) + b[i]); \
    } else {                                                                                               \
        _Pragma("omp simd")                                                                                \
        for (int64_t i = 0; i < n; i++) y[i] = ST_##TY(wc * tanh_rational(alpha * LD_##TX(x[i])) + bc);    \
    }                                                                                                      \
}                                                                                                          \
static inline float bwd_span_##TX##_##TY(const TY *g, const TX *x, TX *dx, int64_t n, float alpha,          \
                                         const float *w, float wc, float *fw, float *fb, float *sw,        \
                                         float *sb) {                                                      \
    float da = 0.0f, s1 = 0.0f, s2 = 0.0f;                                                                 \
    if (fw) {                                                                                              \
        _Pragma("omp simd reduction(+:da)")                                                                \
        for (int64_t i = 0; i < n; i++) {                                                                  \
            float xv = LD_##TX(x[i]), gv = LD_##TY(g[i]), t = tanh_rational(alpha * xv);                   \
            float gwd = gv * w[i] * (1.0f - t * t);                                                        \
            dx[i] = ST_##TX(gwd * alpha);                                                                  \
            da += gwd * xv; fw[i] += gv * t; fb[i] += gv;                                                  \
        }                                                                                                  \
    } else {                                                                                               \
        _Pragma("omp simd reduction(+:da, s1, s2)")                                                        \
        for (int64_t i = 0; i < n; i++) {                                                                  \
            float xv = LD_##TX(x[i]), gv = LD_##TY(g[i]), t = tanh_rational(alpha * xv);                   \
            float gwd = gv * wc * (1.0f - t * t);                                                          \
            dx[i] = ST_##TX(gwd * alpha);                                                                  \
            da += gwd * xv; s1 += gv * t; s2 += gv;                                                        \
        }                                                                                                  \
        *sw += s1; *sb += s2;                                                                              \
    }                                                                                                      \
    return da;                                                                                             \
}
#endif

/* threads split rows (channels-last) or planes (channels-first) into contiguous ranges */
static inline void split_range(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi) {
    int64_t per = (n + nt - 1) / nt;
    *lo = per * tid < n ? per * tid : n;
    *hi = *lo + per < n ? *lo + per : n;
}

#define ROW_TILE 64      /* rows summed in fp32 before flushing into the per-thread double partials */
#define PLANE_CHUNK 1024 /* likewise, elements of a channels-first plane */

#define DEFINE_DYT(TX, TY)                                                                                  \
DEFINE_SPANS(TX, TY)                                                                                       \
void dyt_fwd_##TX##_##TY(const TX *x, TY *y, float alpha, const float *w, const float *b,                   \
                          int64_t outer, int64_t C, int64_t inner, int nthreads) {                         \
    if (inner == 1) {                                                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
        for (int64_t r = 0; r < outer; r++)                                                                \
            fwd_span_##TX##_##TY(x + r * C, y + r * C, C, alpha, w, b, 0.0f, 0.0f);                        \
    } else {                                                                                               \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
        for (int64_t p = 0; p < outer * C; p++)                                                            \
            fwd_span_##TX##_##TY(x + p * inner, y + p * inner, inner, alpha, NULL, NULL, w[p % C], b[p % C]); \
    }                                                                                                      \
}                                                                                                          \
/* One pass over (g, x): dx, and the sums d_alpha = sum g*w*x*(1-t^2), dw[c] = sum g*t, db[c] = sum g. */   \
void dyt_bwd_##TX##_##TY(const TY *g, const TX *x, TX *dx, float alpha, const float *w,                    \
                          int64_t outer, int64_t C, int64_t inner, float *dw, float *db, float *da,        \
                          int nthreads) {                                                                  \
    if (inner == 1) {                                                                                      \
        double *part = (double *)calloc((size_t)nthreads * (2 * C + 1), sizeof(double));                   \
        _Pragma("omp parallel num_threads(nthreads)")                                                      \
        {                                                                                                  \
            int tid = omp_get_thread_num(), nt = omp_get_num_threads();                                    \
            int64_t lo, hi; split_range(outer, tid, nt, &lo, &hi);                                         \
            double *pw = part + (size_t)tid * (2 * C + 1), *pb = pw + C;                                   \
            float *fw = (float *)malloc(2 * C * sizeof(float)), *fb = fw + C;                              \
            double da_acc = 0.0;                                                                           \
            for (int64_t r0 = lo; r0 < hi; r0 += ROW_TILE) {                                               \
                int64_t r1 = r0 + ROW_TILE < hi ? r0 + ROW_TILE : hi;                                      \
                memset(fw, 0, 2 * C * sizeof(float));                                                      \
                for (int64_t r = r0; r < r1; r++)                                                          \
                    da_acc += bwd_span_##TX##_##TY(g + r * C, x + r * C, dx + r * C, C, alpha, w, 0.0f,    \
                                                   fw, fb, NULL, NULL);                                    \
                for (int64_t c = 0; c < C; c++) { pw[c] += fw[c]; pb[c] += fb[c]; }                        \
            }                                                                                              \
            pw[2 * C] = da_acc;                                                                            \
            free(fw);                                                                                      \
        }                                                                                                  \
        double da_sum = 0.0;                                                                               \
        for (int64_t c = 0; c < C; c++) {                                                                  \
            double sw = 0.0, sb = 0.0;                                                                     \
            for (int t = 0; t < nthreads; t++) {                                                           \
                sw += part[(size_t)t * (2 * C + 1) + c]; sb += part[(size_t)t * (2 * C + 1) + C + c];      \
            }                                                                                              \
            dw[c] = (float)sw; db[c] = (float)sb;                                                          \
        }                                                                                                  \
        for (int t = 0; t < nthreads; t++) da_sum += part[(size_t)t * (2 * C + 1) + 2 * C];                \
        *da = (float)da_sum;                                                                               \
        free(part);                                                                                        \
    } else {                                                                                               \
        int64_t planes = outer * C;                                                                        \
        double *part = (double *)malloc((size_t)planes * 3 * sizeof(double));                              \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
        for (int64_t p = 0; p < planes; p++) {                                                             \
            double sw = 0.0, sb = 0.0, sa = 0.0;                                                           \
            for (int64_t i0 = 0; i0 < inner; i0 += PLANE_CHUNK) {                                          \
                int64_t n = i0 + PLANE_CHUNK < inner ? PLANE_CHUNK : inner - i0, off = p * inner + i0;      \
                float fw = 0.0f, fb = 0.0f;                                                                \
                sa += bwd_span_##TX##_##TY(g + off, x + off, dx + off, n, alpha, NULL, w[p % C], NULL,     \
                                           NULL, &fw, &fb);                                                \
                sw += fw; sb += fb;                                                                        \
            }                                                                                              \
            part[3 * p] = sw; part[3 * p + 1] = sb; part[3 * p + 2] = sa;                                  \
        }                                                                                                  \
        double da_sum = 0.0;                                                                               \
        for (int64_t c = 0; c < C; c++) {                                                                  \
            double sw = 0.0, sb = 0.0;                                                                     \
            for (int64_t n = 0; n < outer; n++) {                                                          \
                sw += part[3 * (n * C + c)]; sb += part[3 * (n * C + c) + 1];                              \
                da_sum += part[3 * (n * C + c) + 2];                                                       \
            }                                                                                              \
            dw[c] = (float)sw; db[c] = (float)sb;                                                          \
        }                                                                                                  \
        *da = (float)da_sum;                                                                               \
        free(part);                                                                                        \
    }                                                                                                      \
}

/* every (input, output) storage pair: x bf16 with fp32 params gives fp32 out, as eager type promotion does */
DEFINE_DYT(f32, f32)
DEFINE_DYT(bf16, bf16)
DEFINE_DYT(bf16, f32)
DEFINE_DYT(f32, bf16)
#ifdef __FLT16_MAX__
DEFINE_DYT(f16, f16)
DEFINE_DYT(f16, f32)
DEFINE_DYT(f32, f16)
#endif

/* the tanh of the spans itself, for the accuracy test: w*tanh(1*x) + b with w = 1, b = 0 */
void dyt_tanh_f32(const float *x, float *y, int64_t n) { fwd_span_f32_f32(x, y, n, 1.0f, NULL, NULL, 1.0f, 0.0f); }
