/* Fused DyT forward/backward for CPU: y = w * tanh(alpha * x) + b.
 *
 * Plain C (no torch headers) so it builds in about a second with the system compiler; loaded with ctypes.
 * A tensor is viewed as [outer, C, inner]: channels-last is inner == 1 (rows of C channels), channels-first
 * is one plane of `inner` elements per (n, c). Math is fp32 whatever the storage type; reductions go
 * through double per thread. tanh is a rational minimax approximation (see tanh_rational), so the code
 * vectorises: exact tanh is what makes eager DyT compute-bound on CPU.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

/* NaN test on the bits: the library is built with -ffinite-math-only (for the reciprocal-based division), under
 * which `v != v` folds to false. */
static inline int is_nan(float v) { union { float f; uint32_t u; } c; c.f = v; return (c.u & 0x7fffffffu) > 0x7f800000u; }

/* tanh(z) ~= z * P(z^2) / Q(z^2), fitted (minimax, differential correction) on [0, 9]; |z| is clamped at 9
 * where tanh is 1 - 3e-8. Max abs error vs exact tanh with this build: 3.96e-7 (exhaustive over fp32 [0, 9]); guaranteed and tested: 5e-7. */
static inline float tanh_rational(float v) {
    float z = v > 9.0f ? 9.0f : (v < -9.0f ? -9.0f : v);
    float s = z * z;
    float p = 1.0570305519763679e-08f;
    p = p * s + 1.8481570805306546e-05f;
    p = p * s + 0.0033613122068345547f;
    p = p * s + 0.13266316056251526f;
    p = p * s + 0.9999997019767761f;
    float q = 6.601831614716502e-07f;
    q = q * s + 0.00030695294844917953f;
    q = q * s + 0.025361044332385063f;
    q = q * s + 0.46599528193473816f;
    q = q * s + 1.0f;
    float t = z * p / q;
    t = t > 1.0f ? 1.0f : (t < -1.0f ? -1.0f : t);
    t = v >= 9.0f ? 1.0f : (v <= -9.0f ? -1.0f : t);  /* fp32 tanh is +-1 from |v| ~ 9.01 on */
    return is_nan(v) ? v : t;
}

/* storage types: bf16 by bit manipulation (round to nearest even, NaN kept quiet), fp16 by the compiler */
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
typedef float f32;

/* threads split rows (channels-last) or planes (channels-first) into contiguous ranges */
static inline void split_range(int64_t n, int tid, int nt, int64_t *lo, int64_t *hi) {
    int64_t per = (n + nt - 1) / nt;
    *lo = per * tid < n ? per * tid : n;
    *hi = *lo + per < n ? *lo + per : n;
}

#define ROW_TILE 64  /* rows summed in fp32 before flushing into the per-thread double partials */

#define DEFINE_DYT(TX, TY)                                                                                  \
void dyt_fwd_##TX##_##TY(const TX *x, TY *y, float alpha, const float *w, const float *b,                   \
                          int64_t outer, int64_t C, int64_t inner, int nthreads) {                         \
    if (inner == 1) {                                                                                      \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
        for (int64_t r = 0; r < outer; r++) {                                                              \
            const TX *xr = x + r * C; TY *yr = y + r * C;                                                  \
            _Pragma("omp simd")                                                                            \
            for (int64_t c = 0; c < C; c++)                                                                \
                yr[c] = ST_##TY(w[c] * tanh_rational(alpha * LD_##TX(xr[c])) + b[c]);                      \
        }                                                                                                  \
    } else {                                                                                               \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                 \
        for (int64_t p = 0; p < outer * C; p++) {                                                          \
            const TX *xp = x + p * inner; TY *yp = y + p * inner;                                          \
            const float wc = w[p % C], bc = b[p % C];                                                      \
            _Pragma("omp simd")                                                                            \
            for (int64_t i = 0; i < inner; i++)                                                            \
                yp[i] = ST_##TY(wc * tanh_rational(alpha * LD_##TX(xp[i])) + bc);                          \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
/* One pass over (g, x): dx = g*w*alpha*(1-t^2), and the sums d_alpha = sum g*w*x*(1-t^2),                 \
 * dw[c] = sum g*t, db[c] = sum g, with t = tanh(alpha*x) recomputed in fp32. */                           \
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
                for (int64_t r = r0; r < r1; r++) {                                                        \
                    const TY *gr = g + r * C; const TX *xr = x + r * C; TX *dxr = dx + r * C;              \
                    float da_row = 0.0f;                                                                   \
                    _Pragma("omp simd reduction(+:da_row)")                                                \
                    for (int64_t c = 0; c < C; c++) {                                                      \
                        float xv = LD_##TX(xr[c]), gv = LD_##TY(gr[c]);                                    \
                        float t = tanh_rational(alpha * xv), d = 1.0f - t * t, gw = gv * w[c];             \
                        dxr[c] = ST_##TX(gw * alpha * d);                                                  \
                        da_row += gw * xv * d;                                                             \
                        fw[c] += gv * t;                                                                   \
                        fb[c] += gv;                                                                       \
                    }                                                                                      \
                    da_acc += da_row;                                                                      \
                }                                                                                          \
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
            const TY *gp = g + p * inner; const TX *xp = x + p * inner; TX *dxp = dx + p * inner;          \
            const float wc = w[p % C];                                                                     \
            double sw = 0.0, sb = 0.0, sa = 0.0;                                                           \
            for (int64_t i0 = 0; i0 < inner; i0 += 1024) {                                                 \
                int64_t i1 = i0 + 1024 < inner ? i0 + 1024 : inner;                                        \
                float fw = 0.0f, fb = 0.0f, fa = 0.0f;                                                     \
                _Pragma("omp simd reduction(+:fw, fb, fa)")                                                \
                for (int64_t i = i0; i < i1; i++) {                                                        \
                    float xv = LD_##TX(xp[i]), gv = LD_##TY(gp[i]);                                        \
                    float t = tanh_rational(alpha * xv), d = 1.0f - t * t;                                 \
                    dxp[i] = ST_##TX(gv * wc * alpha * d);                                                 \
                    fa += gv * xv * d; fw += gv * t; fb += gv;                                             \
                }                                                                                          \
                sw += fw; sb += fb; sa += fa * wc;                                                         \
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

/* the rational tanh itself, for the accuracy test */
void dyt_tanh_f32(const float *x, float *y, int64_t n) {
    _Pragma("omp simd")
    for (int64_t i = 0; i < n; i++) y[i] = tanh_rational(x[i]);
}
