/* simd512.h - the AVX-512 intrinsics of the avx512*.c kernels, through SIMDe.
 *
 * The AVX-512 kernel files are written with SIMDe's simde_-prefixed intrinsics
 * (Debian libsimde-dev 0.7.4, header-only) and compiled twice:
 *   - natively (-mavx512f ... as the Makefile gives each file): SIMDe maps every
 *     simde_ call to the compiler's own intrinsic, so the code is plain AVX-512;
 *   - with GPO_SIMDE_EMU and only -mavx2 -mfma -mf16c: SIMDe implements the same
 *     intrinsics in portable code (on 256-bit halves where it can), so the AVX-512
 *     kernels are tested against the reference on machines without AVX-512.
 * Only the simde_ names are used: SIMDe's native aliases collide with the
 * compiler's own declarations.
 *
 * SIMDe 0.7.4 lacks some intrinsics the kernels need; they are defined here as
 * gpo_mm512_* (gpo_mm512_cvtepi32_ps for _mm512_cvtepi32_ps, ...): the native
 * intrinsic when the file is compiled for AVX-512, and otherwise a lane-by-lane
 * version with the native instruction's exact result (rounding, saturation, the
 * reduction order of GCC's _mm512_reduce_* sequences), so both builds compute the
 * same bits.  Add a missing intrinsic here, never in a kernel file.
 *
 * GPO_K512(name) gives a kernel file's exported symbols a per-build name, so both
 * builds link into one library (gpo_k512_name and gpo_k512emu_name). */
#ifndef GPO_SIMD512_H
#define GPO_SIMD512_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(GPO_SIMDE_EMU) && defined(__AVX512F__)
#error "GPO_SIMDE_EMU builds must not be compiled with AVX-512 flags"
#endif
#if !defined(GPO_SIMDE_EMU) && !defined(__AVX512F__)
#error "the AVX-512 kernels are compiled with -mavx512f (or with GPO_SIMDE_EMU)"
#endif

#include <simde/x86/avx512.h>

#ifdef GPO_SIMDE_EMU
#define GPO_K512(name) gpo_k512emu_##name
#define GPO_K512_NATIVE 0
#else
#include <immintrin.h>
#define GPO_K512(name) gpo_k512_##name
#define GPO_K512_NATIVE 1
#endif

#define GPO_AI512 static inline __attribute__((always_inline))

/* For the tile kernels (avx512_int8.c, avx512_bf16.c): natively every helper is
 * inlined and the tiles unrolled for their constant sizes.  The SIMDe build (tests
 * only) leaves inlining to the compiler and unrolls nothing: forcing SIMDe's
 * lane-by-lane code inline everywhere makes it compile for minutes. */
#if GPO_K512_NATIVE
#define GPO_K512_TILE_AI static inline __attribute__((always_inline))
#define GPO_K512_UNROLL(n) _Pragma(GPO_K512_UNROLL_STR_(GCC unroll n))
#define GPO_K512_UNROLL_STR_(x) #x
#else
#define GPO_K512_TILE_AI static inline
#define GPO_K512_UNROLL(n)
#endif

/* Keeps a loaded vector in a register: without it the compiler may fold the load
 * into every instruction that uses the vector, and a tile that uses one activation
 * vector for several rows then loads it once per row (this core sustains fewer
 * 64-byte loads than FMAs per cycle).  A no-op in the SIMDe build. */
#if GPO_K512_NATIVE
#define GPO_K512_IN_REG(v) __asm__("" : "+v"(v))
#else
#define GPO_K512_IN_REG(v) ((void)0)
#endif

#if !GPO_K512_NATIVE && defined(__clang__)
/* Without AVX-512, clang warns that out-of-line calls passing 64-byte vectors have an
 * ABI of their own: these are calls between static functions of one file. */
#pragma clang diagnostic ignored "-Wpsabi"
#endif

/* ---- lane access for the portable versions ---- */
typedef union {
    simde__m512 v;
    float f[16];
} gpo_u512f_;
typedef union {
    simde__m512i v;
    int32_t i32[16];
    uint32_t u32[16];
    int16_t i16[32];
    uint16_t u16[32];
    int8_t i8[64];
    uint8_t u8[64];
} gpo_u512i_;
typedef union {
    simde__m256i v;
    int16_t i16[16];
    uint16_t u16[16];
    int8_t i8[32];
    uint8_t u8[32];
} gpo_u256i_;
typedef union {
    simde__m128i v;
    uint16_t u16[8];
    uint8_t u8[16];
} gpo_u128i_;

static inline float gpo_f16_to_f32_(uint16_t h) {
    const uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    uint32_t u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else { /* subnormal: normalise */
            int k = -1;
            uint32_t mm = m;
            do {
                k++;
                mm <<= 1;
            } while (!(mm & 0x400u));
            u = s | ((uint32_t)(127 - 15 - k) << 23) | ((mm & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0); /* NaN made quiet */
    } else {
        u = s | ((e + 127 - 15) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* f32 -> bf16 as vcvtneps2bf16: round to nearest even; NaN becomes a quiet NaN. */
static inline uint16_t gpo_f32_to_bf16_(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* f32 -> int32 as vcvtps2dq (round to nearest even); out of range and NaN give
 * INT32_MIN, the "integer indefinite" value. */
static inline int32_t gpo_cvt_ps_epi32_(float f) {
    if (!(f >= -2147483648.0f && f < 2147483648.0f)) return INT32_MIN;
    return (int32_t)nearbyintf(f);
}

/* ---- conversions ---- */
GPO_AI512 simde__m512 gpo_mm512_cvtepi32_ps(simde__m512i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepi32_ps(a);
#else
    gpo_u512i_ x = {.v = a};
    gpo_u512f_ r;
    for (int i = 0; i < 16; i++) r.f[i] = (float)x.i32[i];
    return r.v;
#endif
}

/* a * 2^floor(b) in one rounding (SIMDe's version flushes denormals).  The fallback
 * scales in double, where the product is exact for every |floor(b)| up to ~900 and
 * +-inf, then rounds once to f32; a NaN b gives a NaN. */
GPO_AI512 simde__m512 gpo_mm512_scalef_ps(simde__m512 a, simde__m512 b) {
#if GPO_K512_NATIVE
    return _mm512_scalef_ps(a, b);
#else
    gpo_u512f_ x = {.v = a}, y = {.v = b};
    gpo_u512f_ r;
    for (int i = 0; i < 16; i++) {
        const double e = floor((double)y.f[i]);
        const double p = e > 1000.0 ? INFINITY : e < -1000.0 ? 0.0 : ldexp(1.0, (int)e);
        r.f[i] = (float)((double)x.f[i] * (isnan(e) ? e : p));
    }
    return r.v;
#endif
}

GPO_AI512 simde__m512i gpo_mm512_cvtps_epi32(simde__m512 a) {
#if GPO_K512_NATIVE
    return _mm512_cvtps_epi32(a);
#else
    gpo_u512f_ x = {.v = a};
    gpo_u512i_ r;
    for (int i = 0; i < 16; i++) r.i32[i] = gpo_cvt_ps_epi32_(x.f[i]);
    return r.v;
#endif
}

/* 16 f16 values -> f32 (exact). */
GPO_AI512 simde__m512 gpo_mm512_cvtph_ps(simde__m256i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtph_ps(a);
#else
    gpo_u256i_ x = {.v = a};
    gpo_u512f_ r;
    for (int i = 0; i < 16; i++) r.f[i] = gpo_f16_to_f32_(x.u16[i]);
    return r.v;
#endif
}

/* zero-extend 16 u16 -> 16 u32 */
GPO_AI512 simde__m512i gpo_mm512_cvtepu16_epi32(simde__m256i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepu16_epi32(a);
#else
    gpo_u256i_ x = {.v = a};
    gpo_u512i_ r;
    for (int i = 0; i < 16; i++) r.u32[i] = x.u16[i];
    return r.v;
#endif
}

/* sign-extend 16 i16 -> 16 i32 */
GPO_AI512 simde__m512i gpo_mm512_cvtepi16_epi32(simde__m256i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepi16_epi32(a);
#else
    gpo_u256i_ x = {.v = a};
    gpo_u512i_ r;
    for (int i = 0; i < 16; i++) r.i32[i] = x.i16[i];
    return r.v;
#endif
}

/* zero-extend 32 u8 -> 32 u16 */
GPO_AI512 simde__m512i gpo_mm512_cvtepu8_epi16(simde__m256i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepu8_epi16(a);
#else
    gpo_u256i_ x = {.v = a};
    gpo_u512i_ r;
    for (int i = 0; i < 32; i++) r.u16[i] = x.u8[i];
    return r.v;
#endif
}

/* sign-extend 16 i8 -> 16 i32 */
GPO_AI512 simde__m512i gpo_mm512_cvtepi8_epi32(simde__m128i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepi8_epi32(a);
#else
    gpo_u128i_ x = {.v = a};
    gpo_u512i_ r;
    for (int i = 0; i < 16; i++) r.i32[i] = (int8_t)x.u8[i];
    return r.v;
#endif
}

/* 16 i32 -> 16 i8 with signed saturation (vpmovsdb) */
GPO_AI512 simde__m128i gpo_mm512_cvtsepi32_epi8(simde__m512i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtsepi32_epi8(a);
#else
    gpo_u512i_ x = {.v = a};
    gpo_u128i_ r;
    for (int i = 0; i < 16; i++) {
        const int32_t v = x.i32[i];
        r.u8[i] = (uint8_t)(int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
    }
    return r.v;
#endif
}

/* 16 i32 -> 16 i16 with signed saturation (vpmovsdw) */
GPO_AI512 simde__m256i gpo_mm512_cvtsepi32_epi16(simde__m512i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtsepi32_epi16(a);
#else
    gpo_u512i_ x = {.v = a};
    gpo_u256i_ r;
    for (int i = 0; i < 16; i++) {
        const int32_t v = x.i32[i];
        r.i16[i] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
    }
    return r.v;
#endif
}

/* 16 i32 -> 16 i16, truncated (vpmovdw) */
GPO_AI512 simde__m256i gpo_mm512_cvtepi32_epi16(simde__m512i a) {
#if GPO_K512_NATIVE
    return _mm512_cvtepi32_epi16(a);
#else
    gpo_u512i_ x = {.v = a};
    gpo_u256i_ r;
    for (int i = 0; i < 16; i++) r.u16[i] = (uint16_t)x.u32[i];
    return r.v;
#endif
}

/* ---- gathers ---- */
/* 16 dwords, lane i from base + idx[i] bytes (vpgatherdd with scale 1). */
GPO_AI512 simde__m512i gpo_mm512_i32gather_epi32(simde__m512i idx, const void *base) {
#if GPO_K512_NATIVE
    return _mm512_i32gather_epi32(idx, base, 1);
#else
    gpo_u512i_ x = {.v = idx}, r;
    for (int i = 0; i < 16; i++) memcpy(&r.u32[i], (const uint8_t *)base + x.i32[i], 4);
    return r.v;
#endif
}

/* ---- masked loads and stores (only the selected lanes are touched) ---- */
GPO_AI512 simde__m512 gpo_mm512_maskz_loadu_ps(uint16_t k, const float *p) {
#if GPO_K512_NATIVE
    return _mm512_maskz_loadu_ps(k, p);
#else
    gpo_u512f_ r;
    for (int i = 0; i < 16; i++) r.f[i] = (k >> i) & 1 ? p[i] : 0.0f;
    return r.v;
#endif
}

GPO_AI512 void gpo_mm512_mask_storeu_ps(float *p, uint16_t k, simde__m512 a) {
#if GPO_K512_NATIVE
    _mm512_mask_storeu_ps(p, k, a);
#else
    gpo_u512f_ x = {.v = a};
    for (int i = 0; i < 16; i++)
        if ((k >> i) & 1) p[i] = x.f[i];
#endif
}

GPO_AI512 simde__m512i gpo_mm512_maskz_loadu_epi8(uint64_t k, const void *p) {
#if GPO_K512_NATIVE
    return _mm512_maskz_loadu_epi8(k, p);
#else
    gpo_u512i_ r;
    for (int i = 0; i < 64; i++) r.u8[i] = (k >> i) & 1 ? ((const uint8_t *)p)[i] : 0;
    return r.v;
#endif
}

GPO_AI512 simde__m512i gpo_mm512_maskz_loadu_epi16(uint32_t k, const void *p) {
#if GPO_K512_NATIVE
    return _mm512_maskz_loadu_epi16(k, p);
#else
    gpo_u512i_ r;
    for (int i = 0; i < 32; i++) {
        uint16_t v = 0;
        if ((k >> i) & 1) memcpy(&v, (const uint8_t *)p + 2 * i, 2);
        r.u16[i] = v;
    }
    return r.v;
#endif
}

GPO_AI512 simde__m256i gpo_mm256_maskz_loadu_epi16(uint16_t k, const void *p) {
#if GPO_K512_NATIVE
    return _mm256_maskz_loadu_epi16(k, p);
#else
    gpo_u256i_ r;
    for (int i = 0; i < 16; i++) {
        uint16_t v = 0;
        if ((k >> i) & 1) memcpy(&v, (const uint8_t *)p + 2 * i, 2);
        r.u16[i] = v;
    }
    return r.v;
#endif
}

/* ---- horizontal reductions, in the order of GCC's _mm512_reduce_* sequences:
 * halves of 8 (lane i with i + 8), then of 4, then (0 with 2, 1 with 3), then
 * those two.  So the emulated and native builds give the same bits. ---- */
GPO_AI512 float gpo_mm512_reduce_add_ps(simde__m512 a) {
#if GPO_K512_NATIVE
    return _mm512_reduce_add_ps(a);
#else
    gpo_u512f_ x = {.v = a};
    float h[8], q[4];
    for (int i = 0; i < 8; i++) h[i] = x.f[i + 8] + x.f[i];
    for (int i = 0; i < 4; i++) q[i] = h[i + 4] + h[i];
    const float t0 = q[0] + q[2], t1 = q[1] + q[3];
    return t0 + t1;
#endif
}

GPO_AI512 float gpo_mm512_reduce_max_ps(simde__m512 a) {
#if GPO_K512_NATIVE
    return _mm512_reduce_max_ps(a);
#else
    /* vmaxps(a, b) returns b when either is NaN or both are zeros: a > b ? a : b. */
    gpo_u512f_ x = {.v = a};
    float h[8], q[4];
    for (int i = 0; i < 8; i++) h[i] = x.f[i + 8] > x.f[i] ? x.f[i + 8] : x.f[i];
    for (int i = 0; i < 4; i++) q[i] = h[i + 4] > h[i] ? h[i + 4] : h[i];
    const float t0 = q[0] > q[2] ? q[0] : q[2], t1 = q[1] > q[3] ? q[1] : q[3];
    return t0 > t1 ? t0 : t1;
#endif
}

GPO_AI512 int32_t gpo_mm512_reduce_add_epi32(simde__m512i a) {
#if GPO_K512_NATIVE
    return _mm512_reduce_add_epi32(a);
#else
    gpo_u512i_ x = {.v = a};
    uint32_t s = 0;
    for (int i = 0; i < 16; i++) s += x.u32[i]; /* wraps like the instruction */
    return (int32_t)s;
#endif
}

/* ---- BF16 (AVX512_BF16): packing to bf16 with round to nearest even ---- */
/* 16 f32 -> 16 bf16 */
GPO_AI512 simde__m256bh gpo_mm512_cvtneps_pbh(simde__m512 a) {
#if GPO_K512_NATIVE && defined(__AVX512BF16__)
    return _mm512_cvtneps_pbh(a);
#else
    gpo_u512f_ x = {.v = a};
    uint16_t r[16];
    for (int i = 0; i < 16; i++) r[i] = gpo_f32_to_bf16_(x.f[i]);
    simde__m256bh out;
    memcpy(&out, r, sizeof r);
    return out;
#endif
}

/* 32 bf16: the low 16 from b, the high 16 from a (as vcvtne2ps2bf16) */
GPO_AI512 simde__m512bh gpo_mm512_cvtne2ps_pbh(simde__m512 a, simde__m512 b) {
#if GPO_K512_NATIVE && defined(__AVX512BF16__)
    return _mm512_cvtne2ps_pbh(a, b);
#else
    gpo_u512f_ xa = {.v = a}, xb = {.v = b};
    uint16_t r[32];
    for (int i = 0; i < 16; i++) {
        r[i] = gpo_f32_to_bf16_(xb.f[i]);
        r[i + 16] = gpo_f32_to_bf16_(xa.f[i]);
    }
    simde__m512bh out;
    memcpy(&out, r, sizeof r);
    return out;
#endif
}

/* 32 bf16 values loaded as integers, seen as a bf16 vector (no instruction). */
GPO_AI512 simde__m512bh gpo_mm512_castsi512_pbh(simde__m512i a) {
    simde__m512bh r;
    memcpy(&r, &a, sizeof r);
    return r;
}

GPO_AI512 simde__m512i gpo_mm512_castpbh_si512(simde__m512bh a) {
    simde__m512i r;
    memcpy(&r, &a, sizeof r);
    return r;
}

#endif /* GPO_SIMD512_H */
