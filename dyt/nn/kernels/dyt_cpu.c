/* Fused DyT forward/backward for CPU: y = w * tanh(alpha * x) + b.
 *
 * Plain C (no torch headers) so it builds in about a second with the system compiler; loaded with ctypes.
 * A tensor is viewed as [outer, C, inner]: channels-last is inner == 1 (rows of C channels), channels-first
 * is one plane of `inner` elements per (n, c). Math is fp32 whatever the storage type; reductions go
 * through double per thread. tanh is a rational minimax approximation, so the code vectorises: exact tanh
 * is what makes eager DyT compute-bound on CPU.
 *
 * One skeleton (threads, tiles, reductions: DEFINE_DYT) over "spans" of contiguous elements, written once
 * over a few vector primitives with three builds of the same math, picked by what the compiler targets:
 * AVX-512 F/BW/VL (16 lanes), AVX2 + FMA + F16C (8 lanes), both with the division by a hardware reciprocal
 * plus one Newton step (~20 vector ops per VL elements), and portable C that the compiler vectorises itself
 * (`omp simd`) everywhere else.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define DYT_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define DYT_AVX2 1
#endif

/* tanh(z) ~= z * P(z^2) / Q(z^2), fitted (minimax, differential correction) on [0, 9], highest power first.
 * Max abs error vs exact tanh, exhaustive over every fp32 in [0, 9.5]: 3.49e-7 (AVX-512 spans), 3.80e-7
 * (AVX2), 4.20e-7 (portable); guaranteed and tested: 5e-7. */
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

#if defined(DYT_AVX512) || defined(DYT_AVX2)
/* ---- vector primitives: the only width-specific code; the spans below are written once over them ---- */
#ifdef DYT_AVX512
#define VL 16
typedef __m512 vf;
typedef __m512i vi;
#define V(op) _mm512_##op
static inline vf v_rcp(vf q) { return _mm512_rcp14_ps(q); }  /* 1/q to 2^-14 */
/* NaN inputs back into t: fixupimm token table QNaN -> input, SNaN -> quieted input. An instruction, not IEEE
 * arithmetic, so -ffinite-math-only cannot fold it away. */
static inline vf v_keep_nan(vf t, vf v) { return _mm512_fixupimm_ps(t, v, _mm512_set1_epi32(0x21), 0); }
static inline float v_sum(vf v) { return _mm512_reduce_add_ps(v); }
static inline vf v_from16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
static inline __m256i v_to16(vi r) { return _mm512_cvtepi32_epi16(r); }  /* low halves of 32-bit lanes */
#define V_CASTI _mm512_castps_si512
#define VI_AND _mm512_and_si512
#define VI_OR _mm512_or_si512
static inline vi v_nan_select(vf v, vi alt, vi r) {  /* alt in the lanes where v is NaN, r elsewhere */
    __mmask16 nan = _mm512_cmpgt_epu32_mask(VI_AND(V_CASTI(v), _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_blend_epi32(nan, r, alt);
}
#define HALF_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define HALF_STORE(p, h) _mm256_storeu_si256((__m256i *)(p), h)
#define CVT_PH(v) _mm512_cvtph_ps(v)
#define CVT_PS_PH(v) _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#else
#define VL 8
typedef __m256 vf;
typedef __m256i vi;
#define V(op) _mm256_##op
static inline vf v_rcp(vf q) { return _mm256_rcp_ps(q); }  /* 1/q to 1.5 * 2^-12 */
static inline vf v_keep_nan(vf t, vf v) {  /* on the bits: -ffinite-math-only may fold a float NaN compare */
    vi bits = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff));
    return _mm256_blendv_ps(t, v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(bits, _mm256_set1_epi32(0x7f800000))));
}
static inline float v_sum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vf v_from16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
static inline __m128i v_to16(vi r) {  /* pack the (< 2^16) 32-bit lanes, then undo the per-128-bit-lane order */
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}
#define V_CASTI _mm256_castps_si256
#define VI_AND _mm256_and_si256
#define VI_OR _mm256_or_si256
static inline vi v_nan_select(vf v, vi alt, vi r) {
    vi nan = _mm256_cmpgt_epi32(VI_AND(V_CASTI(v), _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    return _mm256_blendv_epi8(r, alt, nan);
}
#define HALF_LOAD(p) _mm_loadu_si128((const __m128i *)(p))
#define HALF_STORE(p, h) _mm_storeu_si128((__m128i *)(p), h)
#define CVT_PH(v) _mm256_cvtph_ps(v)
#define CVT_PS_PH(v) _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#endif
int dyt_simd_lanes(void) { return VL; }

/* tanh on VL lanes. The clamp point 7.9704175 is the first fp32 where this arithmetic's rational reaches 1.0f
 * (and it stays below 1 before it), so |t| <= 1 and tanh(+-inf) = +-1 exactly with no clamp on the output;
 * tanh there is 1 - 2.4e-7. */
static inline vf tanh_v(vf v) {
    const vf lim = V(set1_ps)(7.9704175f);
    vf z = V(max_ps)(V(set1_ps)(-7.9704175f), V(min_ps)(lim, v));
    vf s = V(mul_ps)(z, z), p = V(set1_ps)(TP[0]), q = V(set1_ps)(TQ[0]);
    for (int k = 1; k < 5; k++) {
        p = V(fmadd_ps)(p, s, V(set1_ps)(TP[k]));
        q = V(fmadd_ps)(q, s, V(set1_ps)(TQ[k]));
    }
    vf n = V(mul_ps)(z, p), r = v_rcp(q);
    vf t0 = V(mul_ps)(n, r);
    vf t = V(fmadd_ps)(r, V(fnmadd_ps)(q, t0, n), t0);  /* Newton step on the quotient n/q */
    return v_keep_nan(t, v);
}

/* VL-lane loads and stores per storage type */
static inline vf vld_f32(const f32 *p) { return V(loadu_ps)(p); }
static inline void vst_f32(f32 *p, vf v) { V(storeu_ps)(p, v); }
static inline vf vld_bf16(const bf16 *p) { return v_from16(HALF_LOAD(p)); }
static inline void vst_bf16(bf16 *p, vf v) {  /* as bf16_store, VL at a time */
    vi u = V_CASTI(v), hi = V(srli_epi32)(u, 16);
    vi r = V(srli_epi32)(V(add_epi32)(V(add_epi32)(u, V(set1_epi32)(0x7fff)), VI_AND(hi, V(set1_epi32)(1))), 16);
    HALF_STORE(p, v_to16(v_nan_select(v, VI_OR(hi, V(set1_epi32)(0x40)), r)));
}
#ifdef __FLT16_MAX__
static inline vf vld_f16(const f16 *p) { return CVT_PH(HALF_LOAD(p)); }
static inline void vst_f16(f16 *p, vf v) { HALF_STORE(p, CVT_PS_PH(v)); }
#endif

/* Spans. Forward: y = w*tanh(alpha*x) + b over n elements, w/b per element (a channels-last row) or, with
 * w == NULL, the scalars wc/bc (a channels-first plane). Backward: dx = g*w*alpha*(1-t^2) with t recomputed
 * from x; returns sum g*w*x*(1-t^2) (d_alpha); adds g*t and g per element into fw/fb, or into *sw and *sb.
 * Full vectors run in place; a tail of fewer than VL elements runs through zero-padded stack copies (zero g
 * adds nothing to the sums). */
#define DEFINE_SPANS(TX, TY)                                                                               \
static inline void fwdv_##TX##_##TY(const TX *x, TY *y, vf a, const float *w, const float *b, vf wc, vf bc) { \
    vf t = tanh_v(V(mul_ps)(a, vld_##TX(x)));                                                              \
    vst_##TY(y, V(fmadd_ps)(w ? vld_f32(w) : wc, t, w ? vld_f32(b) : bc));                                 \
}                                                                                                          \
static inline void fwd_span_##TX##_##TY(const TX *x, TY *y, int64_t n, float alpha, const float *w,         \
                                        const float *b, float wc, float bc) {                              \
    const vf a = V(set1_ps)(alpha), wv = V(set1_ps)(wc), bv = V(set1_ps)(bc);                              \
    int64_t i = 0;                                                                                         \
    for (; i + VL <= n; i += VL) fwdv_##TX##_##TY(x + i, y + i, a, w ? w + i : w, w ? b + i : b, wv, bv);   \
    if (i < n) {                                                                                           \
        TX xt[VL] = {0}; TY yt[VL]; float wt[VL] = {0}, bt[VL] = {0}; size_t k = (size_t)(n - i);          \
        memcpy(xt, x + i, k * sizeof(TX));                                                                 \
        if (w) { memcpy(wt, w + i, k * sizeof(float)); memcpy(bt, b + i, k * sizeof(float)); }             \
        fwdv_##TX##_##TY(xt, yt, a, w ? wt : w, w ? bt : b, wv, bv);                                       \
        memcpy(y + i, yt, k * sizeof(TY));                                                                 \
    }                                                                                                      \
}                                                                                                          \
static inline vf bwdv_##TX##_##TY(const TY *g, const TX *x, TX *dx, vf a, const float *w, vf wc, float *fw, \
                                  float *fb, vf *sw, vf *sb, vf da) {                                      \
    vf xv = vld_##TX(x), gv = vld_##TY(g);                                                                 \
    vf t = tanh_v(V(mul_ps)(a, xv));                                                                       \
    vf gwd = V(mul_ps)(V(mul_ps)(gv, w ? vld_f32(w) : wc), V(fnmadd_ps)(t, t, V(set1_ps)(1.0f)));          \
    vst_##TX(dx, V(mul_ps)(gwd, a));                                                                       \
    if (fw) {                                                                                              \
        vst_f32(fw, V(fmadd_ps)(gv, t, vld_f32(fw)));                                                      \
        vst_f32(fb, V(add_ps)(gv, vld_f32(fb)));                                                           \
    } else {                                                                                               \
        *sw = V(fmadd_ps)(gv, t, *sw);                                                                     \
        *sb = V(add_ps)(gv, *sb);                                                                          \
    }                                                                                                      \
    return V(fmadd_ps)(gwd, xv, da);                                                                       \
}                                                                                                          \
static inline float bwd_span_##TX##_##TY(const TY *g, const TX *x, TX *dx, int64_t n, float alpha,          \
                                         const float *w, float wc, float *fw, float *fb, float *sw,        \
                                         float *sb) {                                                      \
    const vf a = V(set1_ps)(alpha), wv = V(set1_ps)(wc);                                                   \
    vf da = V(setzero_ps)(), vw = V(setzero_ps)(), vb = V(setzero_ps)();                                   \
    int64_t i = 0;                                                                                         \
    for (; i + VL <= n; i += VL)                                                                           \
        da = bwdv_##TX##_##TY(g + i, x + i, dx + i, a, w ? w + i : w, wv, fw ? fw + i : fw,                \
                              fw ? fb + i : fb, &vw, &vb, da);                                             \
    if (i < n) {                                                                                           \
        TY gt[VL] = {0}; TX xt[VL] = {0}, dxt[VL]; size_t k = (size_t)(n - i);                             \
        float wt[VL] = {0}, fwt[VL] = {0}, fbt[VL] = {0};                                                  \
        memcpy(gt, g + i, k * sizeof(TY)); memcpy(xt, x + i, k * sizeof(TX));                              \
        if (w) memcpy(wt, w + i, k * sizeof(float));                                                       \
        if (fw) { memcpy(fwt, fw + i, k * sizeof(float)); memcpy(fbt, fb + i, k * sizeof(float)); }        \
        da = bwdv_##TX##_##TY(gt, xt, dxt, a, w ? wt : w, wv, fw ? fwt : fw, fw ? fbt : fb, &vw, &vb, da);  \
        memcpy(dx + i, dxt, k * sizeof(TX));                                                               \
        if (fw) { memcpy(fw + i, fwt, k * sizeof(float)); memcpy(fb + i, fbt, k * sizeof(float)); }        \
    }                                                                                                      \
    if (!fw) { *sw += v_sum(vw); *sb += v_sum(vb); }                                                       \
    return v_sum(da);                                                                                      \
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
