/* One streaming step of a causal Conv-TasNet, in C: sep_network().
 *
 * sepcli/native.py compiles this file on first use with the machine's C
 * compiler (-O3 -march=native) and sepcli/models/conv_tasnet_native.py
 * (NativeStep, what a Streamer with backend="native" runs) calls
 * sep_network() through ctypes once per step; the torch step
 * (ConvTasNetStream.step in sepcli/models/conv_tasnet_stream.py) is the
 * reference it must equal. Why: a real-time chunk is only a few frames, so
 * every 1x1 conv is a product of a few rows with a large weight matrix. BLAS
 * libraries are tuned for large products and spend most of such a call on
 * overheads; the kernel below streams each packed weight panel once per step
 * and keeps a tile of rows x panel columns in registers (docs/streaming-kernel.md).
 *
 * Everything is float32 except the cumulative norms' running sums (float64,
 * as in the offline CumulativeLayerNorm). Only GCC/Clang vector extensions
 * are used, so the same source builds for AVX-512, AVX2 or NEON.
 *
 * Shape legend (as in sepcli): G lanes, K frames per lane, R = G*K rows
 * (lane-major), B bottleneck channels, H block channels, Sc skip channels,
 * P depthwise taps.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16 /* floats per vector register */
#define MR 8  /* rows per register tile: MR * NV accumulators out of 32 registers */
#else
#define VW 8
#define MR 6 /* 12 accumulators out of 16 registers (AVX2); NEON has 32 */
#endif
#define NV 2           /* vectors per panel */
#define NR (VW * NV)   /* panel width: output columns per packed weight panel */

#ifdef SEP_PROFILE /* -DSEP_PROFILE (SEP_NATIVE_CFLAGS): seconds spent in products vs the rest */
#include <time.h>
static double prof_gemm, prof_total;
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
void sep_profile(double *out) { out[0] = prof_gemm; out[1] = prof_total; prof_gemm = prof_total = 0; }
#define PROF_START(v) double v = now_s()
#define PROF_ADD(acc, v) acc += now_s() - v
#else
#define PROF_START(v)
#define PROF_ADD(acc, v)
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float)), aligned(sizeof(float))));

int sep_panel_width(void) { return NR; }
int sep_tile_rows(void) { return MR; }

/* Weight panels may hold float16 (the bits of IEEE half floats): half the
 * bytes to read per step, which is what small steps wait for. Arithmetic
 * stays float32; sepcli uses them only for weights that are exactly float16
 * values, so the products are the same. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_HALF 1
static inline vf load_half(const uint16_t *p) { return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
#elif defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define HAVE_HALF 1
static inline vf load_half(const uint16_t *p) { return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#elif defined(__FLT16_MAX__)
#define HAVE_HALF 1
typedef _Float16 vh __attribute__((vector_size(VW * sizeof(_Float16)), aligned(sizeof(_Float16))));
static inline vf load_half(const uint16_t *p) { return __builtin_convertvector(*(const vh *)p, vf); }
#else
#define HAVE_HALF 0
static inline vf load_half(const uint16_t *p) { (void)p; return (vf){0}; }
#endif

int sep_has_half(void) { return HAVE_HALF; }

/* y[m, n] (= or +=) bias[n] + sum_k x[m, k] * W[k, n] for rows m < mr (mr <= MR),
 * columns n < nc of one panel. wp: the panel, [Kd][NR] (zero padded past nc),
 * float32 or (half) float16. */
static inline __attribute__((always_inline)) void tile(const int mr, const int half, const float *x, int ldx,
                                                       const void *wp, int Kd, float *y, int ldy, const float *bias,
                                                       int accumulate, int nc) {
    vf acc[MR][NV];
    for (int m = 0; m < MR; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = (vf){0};
    for (int k = 0; k < Kd; k++) {
        vf w[NV];
        for (int v = 0; v < NV; v++)
            w[v] = half ? load_half((const uint16_t *)wp + (int64_t)k * NR + v * VW)
                        : *(const vf *)((const float *)wp + (int64_t)k * NR + v * VW);
#pragma GCC unroll 8
        for (int m = 0; m < MR; m++) {
            if (m < mr) {
                const vf xb = (vf){0} + x[(int64_t)m * ldx + k]; /* broadcast */
                for (int v = 0; v < NV; v++) acc[m][v] += xb * w[v];
            }
        }
    }
    for (int m = 0; m < mr; m++) {
        float *ym = y + (int64_t)m * ldy;
        if (nc == NR) {
            for (int v = 0; v < NV; v++) {
                vf r = acc[m][v];
                if (bias) r += *(const vf *)(bias + v * VW);
                if (accumulate) r += *(const vf *)(ym + v * VW);
                *(vf *)(ym + v * VW) = r;
            }
        } else { /* the last, partial panel */
            float buf[NR];
            memcpy(buf, acc[m], sizeof buf);
            for (int n = 0; n < nc; n++) {
                float r = buf[n] + (bias ? bias[n] : 0.0f);
                ym[n] = accumulate ? ym[n] + r : r;
            }
        }
    }
}

#define TILE_CASE(R) \
    case R: \
        if (half) tile(R, 1, xm, ldx, wp, Kd, ym, ldy, bn, accumulate, nc); \
        else tile(R, 0, xm, ldx, wp, Kd, ym, ldy, bn, accumulate, nc); \
        break;

/* y[M, N] (= or +=) bias + x[M, Kd] @ W[Kd, N], with W packed by
 * sepcli.native.pack_panels: [ceil(N/NR)][Kd][NR], float32 or (half) float16.
 * bias may be NULL. */
void sep_gemm(int M, int N, int Kd, const float *x, int ldx, const void *Wp, int half, float *y, int ldy,
              const float *bias, int accumulate) {
    PROF_START(t0);
    const int64_t elem = half ? 2 : 4;
    for (int p = 0; p * NR < N; p++) {
        const void *wp = (const char *)Wp + (int64_t)p * Kd * NR * elem;
        const int nc = N - p * NR < NR ? N - p * NR : NR;
        const float *bn = bias ? bias + p * NR : 0;
        for (int m0 = 0; m0 < M; m0 += MR) {
            const int mr = M - m0 < MR ? M - m0 : MR;
            const float *xm = x + (int64_t)m0 * ldx;
            float *ym = y + (int64_t)m0 * ldy + p * NR;
            switch (mr) {
                TILE_CASE(1)
                TILE_CASE(2)
                TILE_CASE(3)
                TILE_CASE(4)
                TILE_CASE(5)
                TILE_CASE(6)
#if MR > 6
                TILE_CASE(7)
                TILE_CASE(8)
#endif
            }
        }
    }
    PROF_ADD(prof_gemm, t0);
}

/* One ConvBlock and its state: biases and depthwise taps folded as in
 * sepcli.streaming._Block, the 1x1 convs' matrices the model's own (norm2's
 * gain is applied to the rows instead, so float16-valued weights stay exact). */
typedef struct {
    int32_t B, H, P, n_out;   /* n_out = B + Sc: the accumulator's width */
    int32_t n_slope1, n_slope2; /* 1 (shared slope) or H */
    int32_t pad, cap;         /* cache: frames kept (max offset) and frames it holds per lane */
    int64_t pos;              /* cache: where the next frame goes (same for every lane) */
    float eps1, eps2;
    const void *w_in;         /* packed [B -> H] */
    const float *b_in;        /* [H] */
    const float *slope1, *slope2;
    const float *taps;        /* [P, H]: norm1's gain folded in */
    const int32_t *offsets;   /* [P]: frames before the current one that tap p reads */
    const float *b_d;         /* [H] */
    const float *tap_bias;    /* [P, H]: what a tap adds from norm1's bias */
    const void *w_out;        /* packed [H -> B+Sc] */
    const float *gain2;       /* [H]: norm2's gain, applied to the normalised rows */
    float *cache;             /* [G, cap, H]: normalised inputs of the depthwise conv */
    double *sums;             /* [2, G, 2]: per norm and lane, running sum and sum of squares */
} SepBlock;

static inline void prelu_row(float *x, int H, const float *slope, int n_slope) {
    if (n_slope == 1) {
        const float a = slope[0];
        for (int c = 0; c < H; c++) x[c] = x[c] >= 0.0f ? x[c] : x[c] * a;
    } else {
        for (int c = 0; c < H; c++) x[c] = x[c] >= 0.0f ? x[c] : x[c] * slope[c];
    }
}

/* cLN's count per channel at frame `frame` (from the stream's start): frame + 1, or
 * with forgetting (decay < 1) the sum over j <= frame of decay^j, in closed form as
 * sepcli.models.conv_tasnet.cln_counts computes it (times H there: a norm of H
 * channels counts H times this, the same double product either way). */
static inline double unit_count(int64_t frame, double decay) {
    if (decay == 1.0) return (double)(frame + 1);
    const double lg = log(decay);
    return expm1((double)(frame + 1) * lg) / expm1(lg);
}

/* Row sum and sum of squares in float32 (as the offline norm's per-frame sums),
 * then the running float64 totals of the row's lane (times decay first: cLN's
 * forgetting); returns r and -mean*r so that x*r + mr is the normalised row. */
static inline void norm_row(const float *x, int H, double *sum, double count, double decay, float eps, float *r,
                            float *mr) {
    /* vector partial sums (a scalar loop would be one long dependency chain) */
    vf a1[2] = {{0}, {0}}, a2[2] = {{0}, {0}};
    int c = 0;
    for (; c + 2 * VW <= H; c += 2 * VW) {
        for (int v = 0; v < 2; v++) {
            const vf xv = *(const vf *)(x + c + v * VW);
            a1[v] += xv;
            a2[v] += xv * xv;
        }
    }
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = 0; i < VW; i++) {
        s1 += a1[0][i] + a1[1][i];
        s2 += a2[0][i] + a2[1][i];
    }
    for (; c < H; c++) {
        s1 += x[c];
        s2 += x[c] * x[c];
    }
    sum[0] = sum[0] * decay + s1;
    sum[1] = sum[1] * decay + s2;
    const double mean = sum[0] / count;
    double var = sum[1] / count - mean * mean;
    if (var < 0.0) var = 0.0;
    const double rr = 1.0 / sqrt(var + (double)eps);
    *r = (float)rr;
    *mr = (float)(-mean * rr);
}

/* Run K frames of each of G lanes through every block, updating acc
 * ([R, n_out]: residual | skip sum) in place. start: frames before these since
 * the stream began; counts: unit_count of each of the K frames. h, z: scratch
 * [R, H] each. The caller makes sure that every cache has room for K more frames
 * (cap - pad >= K). */
void sep_blocks(SepBlock *blocks, int n_blocks, int half, float *acc, int K, int G, int64_t start,
                const double *counts, double decay, float *h, float *z) {
    const int R = G * K;
    for (int b = 0; b < n_blocks; b++) {
        SepBlock *bl = &blocks[b];
        const int H = bl->H, P = bl->P;
        if (bl->pos + K > bl->cap) { /* keep the last pad frames, at the front */
            for (int g = 0; g < G; g++) {
                float *c = bl->cache + (int64_t)g * bl->cap * H;
                memmove(c, c + (bl->pos - bl->pad) * H, (size_t)bl->pad * H * sizeof(float));
            }
            bl->pos = bl->pad;
        }
        sep_gemm(R, H, bl->B, acc, bl->n_out, bl->w_in, half, h, H, bl->b_in, 0); /* conv_in: [R, H] */
        for (int g = 0; g < G; g++) {
            float *cache = bl->cache + (int64_t)g * bl->cap * H;
            double *sum1 = bl->sums + 2 * g, *sum2 = bl->sums + 2 * (G + g);
            for (int k = 0; k < K; k++) {
                const int i = g * K + k;
                const int64_t frame = start + k;
                const double count = counts[k] * (double)H;
                float *hi = h + (int64_t)i * H, *zi = z + (int64_t)i * H;
                float r, mr;
                prelu_row(hi, H, bl->slope1, bl->n_slope1);
                norm_row(hi, H, sum1, count, decay, bl->eps1, &r, &mr);
                float *now = cache + (bl->pos + k) * H;
                for (int c = 0; c < H; c++) now[c] = hi[c] * r + mr;
                /* causal dilated depthwise conv over the cached normalised frames */
                memcpy(zi, bl->b_d, (size_t)H * sizeof(float));
                for (int p = 0; p < P; p++) {
                    const float *src = now - (int64_t)bl->offsets[p] * H, *tap = bl->taps + (int64_t)p * H;
                    for (int c = 0; c < H; c++) zi[c] += src[c] * tap[c];
                }
                /* before the stream start the offline conv reads zeros, not norm1's bias */
                for (int p = 0; p < P; p++) {
                    if (bl->offsets[p] > frame) {
                        const float *tb = bl->tap_bias + (int64_t)p * H;
                        for (int c = 0; c < H; c++) zi[c] -= tb[c];
                    }
                }
                prelu_row(zi, H, bl->slope2, bl->n_slope2);
                norm_row(zi, H, sum2, count, decay, bl->eps2, &r, &mr);
                for (int c = 0; c < H; c++) zi[c] = (zi[c] * r + mr) * bl->gain2[c];
            }
        }
        bl->pos += K;
        sep_gemm(R, bl->n_out, H, z, H, bl->w_out, half, acc, bl->n_out, 0, 1); /* residual and skip outputs */
    }
}

/* The whole network around the blocks, folded as in ConvTasNetStream._fold (sepcli/models/conv_tasnet_stream.py). */
typedef struct {
    int32_t N, L, hop, q, S, B, Sc, n_out, H, n_blocks;
    int32_t n_slope_out;
    int32_t half;           /* the packed matrices hold float16 */
    float eps0;
    const void *w_enc;      /* packed [L -> N] */
    const void *w_acc;      /* packed [N -> B+Sc]: the bottleneck (zero columns for the skip sum) */
    const float *gain0;     /* [N]: norm0's gain */
    const float *b_acc;     /* [B+Sc] */
    const float *slope_out;
    const void *w_mask;     /* packed [Sc -> S*N] */
    const float *b_mask;    /* [S*N] */
    const void *w_dec;      /* q packed matrices [N -> hop]: hop j of the decoder's basis */
    int64_t w_dec_stride;   /* elements from one packed hop matrix to the next */
    SepBlock *blocks;
    double *sums0;          /* [G, 2]: norm0's running sum and sum of squares per lane */
    float *tail;            /* [G, q-1, S, N]: the last masked frames of each lane */
    double decay;           /* every cLN's running sums times this per frame (1: the paper's cLN) */
} SepNet;

/* Floats of scratch that sep_network needs for K frames of G lanes. */
int64_t sep_scratch_floats(const SepNet *net, int K, int G) {
    const int64_t R = (int64_t)G * K;
    const int64_t floats = R * (2 * net->N + net->n_out + 2 * net->H + net->S * net->N)
        + (int64_t)(net->q - 1 + K) * net->S * net->N + (int64_t)K * net->S * net->hop;
    return floats + (floats & 1) + 2 * (int64_t)K; /* then K doubles (cLN counts), 8-byte aligned */
}

/* One streaming step: K frames of each of G lanes, from lane g's samples
 * lane_in[g] ((K-1)*hop + L of them), to out [G, S, K*hop]: the output hops
 * these frames complete (overlap-added with the previous frames' tails). */
void sep_network(SepNet *net, const float *const *lane_in, int K, int G, int64_t start, float *out, float *scratch) {
    PROF_START(t0);
    const int N = net->N, S = net->S, q = net->q, hop = net->hop, n_out = net->n_out, R = G * K;
    float *w = scratch, *wn = w + (int64_t)R * N, *acc = wn + (int64_t)R * N, *h = acc + (int64_t)R * n_out;
    float *z = h + (int64_t)R * net->H, *mask = z + (int64_t)R * net->H;
    float *masked = mask + (int64_t)R * S * N, *dec = masked + (int64_t)(q - 1 + K) * S * N;
    const int64_t used = (int64_t)(dec - scratch) + (int64_t)K * S * hop;
    double *counts = (double *)(scratch + used + (used & 1)); /* [K]: scratch is 64-byte aligned */
    /* cLN counts depend only on the frame: once per step, not once per norm */
    for (int k = 0; k < K; k++) counts[k] = unit_count(start + k, net->decay);
    for (int g = 0; g < G; g++) { /* encoder: frames overlap, so row stride = hop */
        float *wg = w + (int64_t)g * K * N;
        sep_gemm(K, N, net->L, lane_in[g], hop, net->w_enc, net->half, wg, N, 0, 0);
        for (int64_t i = 0; i < (int64_t)K * N; i++) wg[i] = wg[i] > 0.0f ? wg[i] : 0.0f;
        for (int k = 0; k < K; k++) {
            float r, mr;
            const float *wi = wg + (int64_t)k * N;
            float *o = wn + ((int64_t)g * K + k) * N;
            norm_row(wi, N, net->sums0 + 2 * g, counts[k] * (double)N, net->decay, net->eps0, &r, &mr);
            for (int c = 0; c < N; c++) o[c] = (wi[c] * r + mr) * net->gain0[c];
        }
    }
    sep_gemm(R, n_out, N, wn, N, net->w_acc, net->half, acc, n_out, net->b_acc, 0); /* [R, B+Sc] */
    sep_blocks(net->blocks, net->n_blocks, net->half, acc, K, G, start, counts, net->decay, h, z);
    for (int i = 0; i < R; i++) prelu_row(acc + (int64_t)i * n_out + net->B, net->Sc, net->slope_out, net->n_slope_out);
    sep_gemm(R, S * N, net->Sc, acc + net->B, n_out, net->w_mask, net->half, mask, S * N, net->b_mask, 0);
    for (int i = 0; i < R; i++) {
        float *mi = mask + (int64_t)i * S * N;
        for (int j = 0; j < S * N; j++) mi[j] = 1.0f / (1.0f + expf(-mi[j])); /* sigmoid masks */
    }
    const int64_t frame = (int64_t)S * N, tail_n = (int64_t)(q - 1) * frame;
    for (int g = 0; g < G; g++) {
        float *tail = net->tail + (int64_t)g * tail_n;
        memcpy(masked, tail, (size_t)tail_n * sizeof(float));
        for (int k = 0; k < K; k++) { /* masked encoder frames [S, N] */
            const float *mi = mask + ((int64_t)g * K + k) * frame, *wi = w + ((int64_t)g * K + k) * N;
            float *o = masked + tail_n + (int64_t)k * frame;
            for (int s = 0; s < S; s++)
                for (int c = 0; c < N; c++) o[s * N + c] = mi[s * N + c] * wi[c];
        }
        /* overlap-add: output hop k = sum over j of masked frame k-j times hop j of the basis */
        for (int j = 0; j < q; j++)
            sep_gemm(K * S, hop, N, masked + (int64_t)(q - 1 - j) * frame, N,
                     (const char *)net->w_dec + j * net->w_dec_stride * (net->half ? 2 : 4), net->half, dec, hop, 0,
                     j > 0);
        memcpy(tail, masked + (int64_t)K * frame, (size_t)tail_n * sizeof(float));
        float *og = out + (int64_t)g * S * K * hop;
        for (int k = 0; k < K; k++) /* [K, S, hop] -> [S, K*hop] */
            for (int s = 0; s < S; s++)
                memcpy(og + (int64_t)s * K * hop + (int64_t)k * hop, dec + ((int64_t)k * S + s) * hop,
                       (size_t)hop * sizeof(float));
    }
    PROF_ADD(prof_total, t0);
}
