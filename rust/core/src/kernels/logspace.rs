//! Log-domain primitives: a vectorisable `exp`, log-sum-exp and softmax.
//!
//! `std`'s `exp` is a libm call that the compiler cannot vectorise, and exponentials are
//! the bulk of the work of every sum-product method, so we keep our own branch-free one.

pub(crate) const LOG2E: f64 = std::f64::consts::LOG2_E;
/// ln 2 split in two (fdlibm's bit patterns): `n * LN2_HI` is exact for |n| < 2^11.
pub(crate) const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
pub(crate) const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits.
pub(crate) const MAGIC: f64 = 6_755_399_441_055_744.0;
/// Below this the result is flushed to exactly 0 (e^-708 ≈ 3e-308 is the normal range's end).
pub const EXP_FLUSH: f64 = -708.0;
/// [`exp`]'s polynomial on the reduced argument, highest degree first (Horner): the
/// Taylor series to degree 13 on |r| <= ln2/2, truncation error below 2e-17.
pub(crate) const EXP_POLY: [f64; 14] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `e^x`, correct to a few ulp for `x` in [-708, 709]; exactly 0 for `x < -708` (and −inf).
/// Branch-free so loops over it vectorise.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    let xc = x.clamp(EXP_FLUSH, 709.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for k in &EXP_POLY[1..] {
        p = p * r + k;
    }
    let ni = (t.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let scale = f64::from_bits(((ni + 1023) << 52) as u64);
    let y = p * scale;
    if x < EXP_FLUSH {
        0.0
    } else {
        y
    }
}

/// `e^x` in f32 for `x <= 0`, to a few ulp (Cephes' `expf` polynomial); exactly 0 below
/// −87 (where f32's normal range ends) and for −inf. Branch-free so loops vectorise at
/// eight lanes: float32 models exponentiate at f32 cost.
#[inline(always)]
pub fn exp_nonpos_f32(x: f32) -> f32 {
    use expf::*;
    let xc = x.clamp(FLUSH, 0.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = POLY[0];
    for k in &POLY[1..] {
        p = p * r + k;
    }
    let y = p * r * r + r + 1.0;
    expf::scaled(x, t, y)
}

/// `dst[k] = e^(src[k] − m)` in f32 for `src[k] <= m`, exactly 0 below −87 (and for −inf),
/// like [`exp_nonpos_f32`]: the table exponentials of the per-edge chain kernels. Where the
/// CPU has AVX2 and FMA (see `batch::has_fma`) each is `fma::exp`, the same polynomial
/// with fused multiply–adds — half the operations and dependency chain, and as accurate —
/// whose eight-lane form the grouped kernel (`chain_lanes`) shares bit for bit; elsewhere
/// [`exp_nonpos_f32`] of `src[k] − m`.
///
/// # Panics
/// When `dst` is shorter than `src`.
#[inline(always)]
pub fn exp_shifted_f32(src: &[f32], m: f32, dst: &mut [f32]) {
    assert!(dst.len() >= src.len(), "exp_shifted_f32 lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx512() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA, checked just above.
        return unsafe { avx512::exp_shifted(src, m, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { fma::exp_shifted(src, m, dst) };
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = exp_nonpos_f32(x - m);
    }
}

/// [`exp_nonpos_f32`] with fused multiply–adds, for code compiled with the `fma` target
/// feature (elsewhere `mul_add` is a library call: right, but slow).
pub(crate) mod fma {
    use super::expf::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// `e^x` in f32 for `x <= 0`: [`super::exp_nonpos_f32`]'s range reduction and
    /// polynomial with each multiply–add fused (one rounding instead of two).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn exp(x: f32) -> f32 {
        exp_upto(x, 0.0)
    }

    /// [`exp`] for `x <= top` (`top` at most 88, where f32 ends): `x` is clamped to
    /// `[FLUSH, top]`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    fn exp_upto(x: f32, top: f32) -> f32 {
        let xc = x.clamp(FLUSH, top);
        let t = xc.mul_add(LOG2E, MAGIC);
        let n = t - MAGIC;
        let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
        let mut p = POLY[0];
        for &k in &POLY[1..] {
            p = p.mul_add(r, k);
        }
        let y = (p * r).mul_add(r, r) + 1.0;
        scaled(x, t, y)
    }

    /// [`exp`] on eight lanes, operation for operation (the same bits).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA (the caller is compiled with both).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { exp8_upto(x, 0.0) }
    }

    /// [`exp_upto`] on eight lanes, operation for operation.
    ///
    /// # Safety
    /// As [`exp8`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn exp8_upto(x: __m256, top: f32) -> __m256 {
        let s = _mm256_set1_ps;
        // clamp(x, FLUSH, top) as `f32::clamp` does it: `x < FLUSH → FLUSH`, then `> top →
        // top` (max/min return their second operand when the compare fails, so NaN stays
        // NaN).
        let xc = _mm256_min_ps(s(top), _mm256_max_ps(s(FLUSH), x));
        let t = _mm256_fmadd_ps(xc, s(LOG2E), s(MAGIC));
        let n = _mm256_sub_ps(t, s(MAGIC));
        let r = _mm256_fnmadd_ps(n, s(LN2_LO), _mm256_fnmadd_ps(n, s(LN2_HI), xc));
        let mut p = s(POLY[0]);
        for &k in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, s(k));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), s(1.0));
        let ni = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(MAGIC.to_bits() as i32),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        let flush = _mm256_cmp_ps::<_CMP_LT_OQ>(x, s(FLUSH));
        _mm256_andnot_ps(flush, _mm256_mul_ps(y, scale))
    }

    /// See [`super::exp_shifted_f32`].
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `dst` is at least as long as `src`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted(src: &[f32], m: f32, dst: &mut [f32]) {
        let full = src.len() / 8 * 8;
        let mm = _mm256_set1_ps(m);
        for k in (0..full).step_by(8) {
            // SAFETY: entries `k..k + 8` lie within both slices (`k + 8 <= full`).
            unsafe {
                let x = _mm256_sub_ps(_mm256_loadu_ps(src.as_ptr().add(k)), mm);
                _mm256_storeu_ps(dst.as_mut_ptr().add(k), exp8(x));
            }
        }
        for (d, &x) in dst[full..].iter_mut().zip(&src[full..]) {
            *d = exp(x - m);
        }
    }

    /// How far ahead (in f32 entries, 1 KiB) [`exp_ranged`] asks for its table's lines.
    const PREFETCH_AHEAD: usize = 256;

    /// See [`super::exp_ranged_f32`].
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `dst` is at least as long as `src`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_ranged(
        src: &[f32],
        shift: f32,
        top: f32,
        dst: &mut [f32],
    ) -> (f32, f32, bool) {
        let full = src.len() / 8 * 8;
        let sh = _mm256_set1_ps(shift);
        // SAFETY: the CPU has AVX2 (this function's contract).
        let mut range = unsafe { super::Range8::new() };
        for k in (0..full).step_by(8) {
            // SAFETY: entries `k..k + 8` lie within both slices (`k + 8 <= full`).
            unsafe {
                if k % 16 == 0 {
                    // A table not yet cached: asking for the line 1 KiB ahead keeps more
                    // of its reads in flight than the hardware's prefetcher does while
                    // the exponentials run (measured 12–20% off the pass at C = 50–100).
                    // A hint only (no fault past the end; the next table usually lies there).
                    _mm_prefetch::<_MM_HINT_T0>(
                        src.as_ptr().wrapping_add(k + PREFETCH_AHEAD) as *const i8
                    );
                }
                let x = _mm256_loadu_ps(src.as_ptr().add(k));
                range.add(x);
                let y = exp8_upto(_mm256_sub_ps(x, sh), top);
                _mm256_storeu_ps(dst.as_mut_ptr().add(k), y);
            }
        }
        for (d, &x) in dst[full..].iter_mut().zip(&src[full..]) {
            *d = exp_upto(x - shift, top);
        }
        // SAFETY: as above.
        unsafe { range.finish(&src[full..]) }
    }
}

/// [`fma`]'s table exponentials on sixteen lanes, for CPUs with AVX-512F: operation for
/// operation the eight-lane ones (the same bits), with twice the entries per instruction and
/// registers enough to keep the polynomial's constants out of memory. An exponential pass
/// over a table computes its polynomial per entry and so is bound by vector arithmetic, not
/// by reading the table (measured: the chain kernel's table pass at C = 100 scales with
/// threads and spends its time on the polynomial).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::expf::*;
    use std::arch::x86_64::*;

    /// How far ahead (in f32 entries, 4 KiB) [`exp_ranged`] asks for its table's lines:
    /// further than the eight-lane pass, whose slower arithmetic leaves the reads more time
    /// (at C = 100 on one thread the pass took 19.5 ms a call asking 1 KiB ahead, 17.3–17.9
    /// ms asking 2–8 KiB ahead).
    const PREFETCH_AHEAD: usize = 1024;

    /// [`super::fma`]'s `exp8_upto` on sixteen lanes, operation for operation.
    ///
    /// # Safety
    /// The CPU has AVX-512F and FMA (the caller is compiled with both).
    #[inline(always)]
    unsafe fn exp16_upto(x: __m512, top: f32) -> __m512 {
        let s = _mm512_set1_ps;
        let xc = _mm512_min_ps(s(top), _mm512_max_ps(s(FLUSH), x));
        let t = _mm512_fmadd_ps(xc, s(LOG2E), s(MAGIC));
        let n = _mm512_sub_ps(t, s(MAGIC));
        let r = _mm512_fnmadd_ps(n, s(LN2_LO), _mm512_fnmadd_ps(n, s(LN2_HI), xc));
        let mut p = s(POLY[0]);
        for &k in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, s(k));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), s(1.0));
        let ni = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(MAGIC.to_bits() as i32),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            ni,
            _mm512_set1_epi32(127),
        )));
        // Kept where `x < FLUSH` fails (NaN included), +0 elsewhere: the eight-lane
        // `andnot` of that compare's mask.
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, s(FLUSH));
        _mm512_maskz_mul_ps(keep, y, scale)
    }

    /// See [`super::exp_shifted_f32`]; the entries past the last sixteen take the
    /// eight-lane pass.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA; `dst` is at least as long as `src`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp_shifted(src: &[f32], m: f32, dst: &mut [f32]) {
        let full = src.len() / 16 * 16;
        let mm = _mm512_set1_ps(m);
        for k in (0..full).step_by(16) {
            // SAFETY: entries `k..k + 16` lie within both slices (`k + 16 <= full`).
            unsafe {
                let x = _mm512_sub_ps(_mm512_loadu_ps(src.as_ptr().add(k)), mm);
                _mm512_storeu_ps(dst.as_mut_ptr().add(k), exp16_upto(x, 0.0));
            }
        }
        // SAFETY: the CPU has AVX2 and FMA; `dst[full..]` is as long as `src[full..]`.
        unsafe { super::fma::exp_shifted(&src[full..], m, &mut dst[full..]) }
    }

    /// See [`super::exp_ranged_f32`]; the entries past the last sixteen take the
    /// eight-lane pass, whose range is merged in.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA; `dst` is at least as long as `src`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp_ranged(
        src: &[f32],
        shift: f32,
        top: f32,
        dst: &mut [f32],
    ) -> (f32, f32, bool) {
        let full = src.len() / 16 * 16;
        let sh = _mm512_set1_ps(shift);
        let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut lo = _mm512_set1_ps(f32::INFINITY);
        let mut nan: __mmask16 = 0;
        for k in (0..full).step_by(16) {
            // SAFETY: entries `k..k + 16` lie within both slices (`k + 16 <= full`).
            unsafe {
                // One line per step (a hint only: no fault past the end).
                _mm_prefetch::<_MM_HINT_T0>(
                    src.as_ptr().wrapping_add(k + PREFETCH_AHEAD) as *const i8
                );
                let x = _mm512_loadu_ps(src.as_ptr().add(k));
                hi = _mm512_max_ps(hi, x);
                lo = _mm512_min_ps(lo, x);
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                let y = exp16_upto(_mm512_sub_ps(x, sh), top);
                _mm512_storeu_ps(dst.as_mut_ptr().add(k), y);
            }
        }
        // SAFETY: the CPU has AVX2 and FMA; `dst[full..]` is as long as `src[full..]`.
        let (h, l, n) =
            unsafe { super::fma::exp_ranged(&src[full..], shift, top, &mut dst[full..]) };
        // Largest and smallest across the lanes (NaN lanes, if any, are reported by `nan`
        // and make the caller discard the range).
        let (mut hs, mut ls) = ([0.0f32; 16], [0.0f32; 16]);
        // SAFETY: sixteen f32 each.
        unsafe {
            _mm512_storeu_ps(hs.as_mut_ptr(), hi);
            _mm512_storeu_ps(ls.as_mut_ptr(), lo);
        }
        let hi = hs.iter().fold(h, |a, &x| if x > a { x } else { a });
        let lo = ls.iter().fold(l, |a, &x| if x < a { x } else { a });
        (hi, lo, n || nan != 0)
    }
}

/// `dst[k] = e^(min(src[k] − shift, top))` in f32 (`top` at most 88; exactly 0 below
/// −87), with the range of `src` read in the same pass: `(largest, smallest, whether any
/// entry is NaN)` as [`range`] gives them. One read of a table that is not yet cached,
/// where [`range`] then [`exp_shifted_f32`] read it twice: for a kernel that guesses the
/// shift (say, the previous table's largest entry) and takes the pass again, from L1, when
/// the largest entry turns out more than `top` above it. `None` (nothing written) where
/// the CPU lacks AVX2 or FMA.
#[inline(always)]
pub fn exp_ranged_f32(
    src: &[f32],
    shift: f32,
    top: f32,
    dst: &mut [f32],
) -> Option<(f32, f32, bool)> {
    assert!(dst.len() >= src.len(), "exp_ranged_f32 lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx512() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA, checked just above.
        return Some(unsafe { avx512::exp_ranged(src, shift, top, dst) });
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_fma() {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return Some(unsafe { fma::exp_ranged(src, shift, top, dst) });
    }
    let _ = (shift, top);
    None
}

/// [`exp_nonpos_f32`]'s constants (shared with its eight-lane copy in `chain_lanes`).
pub(crate) mod expf {
    pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    pub(crate) const MAGIC: f32 = 12_582_912.0;
    /// Below this the result is flushed to exactly 0 (f32's normal range ends near e^-87).
    pub(crate) const FLUSH: f32 = -87.0;

    /// `e^r`'s approximation `y` times `2^n`, `n` read from the low mantissa bits of
    /// `t = x·log2(e) + MAGIC`; 0 where `x < FLUSH` (the exponential's last step).
    #[inline(always)]
    pub(crate) fn scaled(x: f32, t: f32, y: f32) -> f32 {
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let scale = f32::from_bits(((ni + 127) << 23) as u32);
        if x < FLUSH {
            0.0
        } else {
            y * scale
        }
    }
    /// Cephes' polynomial, highest degree first (Horner).
    pub(crate) const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// Natural log of a positive, normal, finite `x` (x >= 2.3e-308), to about 1 ulp.
/// Branch-free so loops over it vectorise; callers keep 0, subnormals and inf away.
#[inline(always)]
pub fn ln_pos(x: f64) -> f64 {
    const SQRT_HALF_BITS: i64 = 0x3fe6_a09e_667f_3bcd;
    let bits = x.to_bits() as i64;
    // x = 2^k * m with m in [sqrt(1/2), sqrt(2)).
    let k = (bits - SQRT_HALF_BITS) >> 52;
    let m = f64::from_bits((bits - (k << 52)) as u64);
    // k as f64 without an int->float conversion instruction (absent from AVX2 for i64).
    let kf = f64::from_bits(MAGIC.to_bits().wrapping_add(k as u64)) - MAGIC;
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    // ln m = 2 atanh(s) = 2 s Σ z^j / (2j + 1); |s| <= 0.172 so 11 terms reach 1e-17.
    let mut p = 1.0 / 23.0;
    p = p * z + 1.0 / 21.0;
    p = p * z + 1.0 / 19.0;
    p = p * z + 1.0 / 17.0;
    p = p * z + 1.0 / 15.0;
    p = p * z + 1.0 / 13.0;
    p = p * z + 1.0 / 11.0;
    p = p * z + 1.0 / 9.0;
    p = p * z + 1.0 / 7.0;
    p = p * z + 1.0 / 5.0;
    p = p * z + 1.0 / 3.0;
    p = p * z + 1.0;
    kf * LN2_HI + (2.0 * s * p + kf * LN2_LO)
}

/// Natural log of a positive, normal, finite f32 `x` (x >= 1.2e-38), to a few ulp of f32.
/// Branch-free so loops vectorise at eight lanes; callers keep 0, subnormals and inf away.
#[inline(always)]
pub fn ln_pos_f32(x: f32) -> f32 {
    const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
    const LN2: f32 = std::f32::consts::LN_2;
    let bits = x.to_bits() as i32;
    // x = 2^k * m with m in [sqrt(1/2), sqrt(2)).
    let k = (bits - SQRT_HALF_BITS) >> 23;
    let m = f32::from_bits((bits - (k << 23)) as u32);
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    // ln m = 2 atanh(s) = 2 s Σ z^j / (2j + 1); |s| <= 0.172 so five terms reach 2e-9.
    let mut p = 1.0 / 9.0;
    p = p * z + 1.0 / 7.0;
    p = p * z + 1.0 / 5.0;
    p = p * z + 1.0 / 3.0;
    p = p * z + 1.0;
    k as f32 * LN2 + 2.0 * s * p
}

/// `xs[k] = e^(xs[k] - shift)` in place.
#[inline(always)]
pub fn exp_shifted(xs: &mut [f64], shift: f64) {
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
}

/// `(largest, smallest, whether any entry is NaN)` of `v` (−inf and +inf when it is
/// empty; the two are those of the entries that are not NaN, or meaningless when one is).
/// float32 runs in AVX max/min instructions where the CPU has them: compare-and-select
/// lanes, which vectorise for `finite_range`'s three outputs, come out as mask shuffles
/// for these two. (The NaN test lets a kernel that reads each table anyway check unchecked
/// scores in the same pass: one more compare per vector.)
#[inline(always)]
pub fn range<T: crate::kernels::real::Real>(v: &[T]) -> (T, T, bool) {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = T::as_f32(v) {
        if crate::kernels::batch::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            let (hi, lo, nan) = unsafe { avx_range(f) };
            return (T::from_f64(hi as f64), T::from_f64(lo as f64), nan);
        }
    }
    let (mut hi, mut lo, mut nan) = (T::NEG_INFINITY, T::INFINITY, false);
    #[allow(clippy::eq_op)]
    for &x in v {
        hi = if x > hi { x } else { hi };
        lo = if x < lo { x } else { lo };
        nan |= x != x;
    }
    (hi, lo, nan)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx_range(v: &[f32]) -> (f32, f32, bool) {
    let lanes = v.chunks_exact(8);
    let rest = lanes.remainder();
    // SAFETY: the CPU has AVX2 (this function's contract).
    let mut range = unsafe { Range8::new() };
    for ch in lanes {
        // SAFETY: `ch` holds eight f32 (unaligned load); AVX2 as above.
        unsafe { range.add(std::arch::x86_64::_mm256_loadu_ps(ch.as_ptr())) };
    }
    // SAFETY: as above.
    unsafe { range.finish(rest) }
}

/// Running `(largest, smallest, any NaN)` over eight f32 lanes, for [`range`]'s AVX pass and
/// the one-pass exponentials ([`exp_ranged_f32`]). Its `unsafe fn`s need AVX2 and are
/// always inlined into callers compiled with it.
#[cfg(target_arch = "x86_64")]
struct Range8 {
    hi: std::arch::x86_64::__m256,
    lo: std::arch::x86_64::__m256,
    nan: std::arch::x86_64::__m256,
}

#[cfg(target_arch = "x86_64")]
impl Range8 {
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn new() -> Range8 {
        use std::arch::x86_64::*;
        Range8 {
            hi: _mm256_set1_ps(f32::NEG_INFINITY),
            lo: _mm256_set1_ps(f32::INFINITY),
            nan: _mm256_setzero_ps(),
        }
    }

    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn add(&mut self, x: std::arch::x86_64::__m256) {
        use std::arch::x86_64::*;
        self.hi = _mm256_max_ps(self.hi, x);
        self.lo = _mm256_min_ps(self.lo, x);
        self.nan = _mm256_or_ps(self.nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    }

    /// The range of the lanes and of `rest` (the entries past the last whole vector).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn finish(self, rest: &[f32]) -> (f32, f32, bool) {
        use std::arch::x86_64::*;
        let (mut h, mut l) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: eight f32 each.
        unsafe {
            _mm256_storeu_ps(h.as_mut_ptr(), self.hi);
            _mm256_storeu_ps(l.as_mut_ptr(), self.lo);
        }
        let hi = h
            .iter()
            .chain(rest)
            .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
        let lo = l
            .iter()
            .chain(rest)
            .fold(f32::INFINITY, |a, &x| if x < a { x } else { a });
        let nan = _mm256_movemask_ps(self.nan) != 0 || rest.iter().any(|x| x.is_nan());
        (hi, lo, nan)
    }
}

/// `(largest entry, smallest finite entry, whether any entry is −inf)` of `v`: −inf and
/// +inf for the first two when no entry is finite. Eight independent lanes of compares
/// (not `max`/`min`, whose NaN rules block vector instructions), so it vectorises in the
/// caller's `simd_dispatch` copy.
#[inline(always)]
pub fn finite_range<T: crate::kernels::real::Real>(v: &[T]) -> (T, T, bool) {
    let (mut his, mut los, mut bad) = ([T::NEG_INFINITY; 8], [T::INFINITY; 8], [false; 8]);
    let mut lanes = v.chunks_exact(8);
    for ch in &mut lanes {
        for j in 0..8 {
            let x = ch[j];
            let fin = x > T::NEG_INFINITY;
            his[j] = if x > his[j] { x } else { his[j] };
            los[j] = if fin && x < los[j] { x } else { los[j] };
            bad[j] |= !fin;
        }
    }
    for (j, &x) in lanes.remainder().iter().enumerate() {
        let fin = x > T::NEG_INFINITY;
        his[j] = if x > his[j] { x } else { his[j] };
        los[j] = if fin && x < los[j] { x } else { los[j] };
        bad[j] |= !fin;
    }
    let hi = his.iter().fold(T::NEG_INFINITY, |a, &x| a.max(x));
    let lo = los
        .iter()
        .fold(T::INFINITY, |a, &x| if x < a { x } else { a });
    (hi, lo, bad.iter().any(|&b| b))
}

/// Largest minus smallest finite entry (0 when none is finite): how far apart the scores
/// a probability-domain kernel must hold are.
#[inline]
pub fn finite_span(v: &[f64]) -> f64 {
    let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
    for &x in v.iter().filter(|&&x| x > f64::NEG_INFINITY) {
        hi = hi.max(x);
        lo = lo.min(x);
    }
    if hi == f64::NEG_INFINITY {
        0.0
    } else {
        hi - lo
    }
}

/// `v = exp(v − max v)` in place (−inf → 0; all −inf → all 0).
#[inline]
pub fn exp_rel(v: &mut [f64]) {
    let m = max(v);
    exp_shifted(v, if m == f64::NEG_INFINITY { 0.0 } else { m });
}

/// Maximum of a slice (−inf when empty or all −inf).
#[inline(always)]
pub fn max(xs: &[f64]) -> f64 {
    xs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x))
}

/// `log Σ e^x`, −inf when every entry is −inf. Uses `tmp` (same length) as scratch.
#[inline(always)]
pub fn logsumexp(xs: &[f64], tmp: &mut [f64]) -> f64 {
    let m = max(xs);
    if m == f64::NEG_INFINITY {
        return m;
    }
    tmp.copy_from_slice(xs);
    exp_shifted(tmp, m);
    m + tmp.iter().sum::<f64>().ln()
}

/// Writes `softmax(xs)` to `out`. `xs` must have a finite maximum.
#[inline(always)]
pub fn softmax(xs: &[f64], out: &mut [f64]) {
    let m = max(xs);
    out.copy_from_slice(xs);
    exp_shifted(out, m);
    let inv = 1.0 / out.iter().sum::<f64>();
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next draw in `[0, 1)` of a small linear congruential generator (reproducible
    /// test inputs without a dependency).
    fn uniform(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 33) as f64 / (1u64 << 31) as f64
    }

    /// `range` (AVX for f32 where the CPU has it) against a plain fold, every length
    /// around the eight-lane blocks, with ±inf entries in the vector part and the tail;
    /// and a NaN anywhere is reported (the range is then not asked for).
    #[test]
    fn range_matches_a_plain_fold() {
        let mut state = 1u64;
        let mut next = || uniform(&mut state) * 200.0 - 100.0;
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 49, 2500] {
            for special in [None, Some(f64::NEG_INFINITY), Some(f64::INFINITY)] {
                for at in [0, n / 2, n.saturating_sub(1)] {
                    let mut v: Vec<f64> = (0..n).map(|_| next()).collect();
                    if let (Some(x), true) = (special, n > 0) {
                        v[at] = x;
                    }
                    let hi = v.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                    let lo = v.iter().fold(f64::INFINITY, |a, &x| a.min(x));
                    assert_eq!(range(&v), (hi, lo, false), "f64 n={n}");
                    let w: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    assert_eq!(range(&w), (hi as f32, lo as f32, false), "f32 n={n}");
                    if n > 0 {
                        v[at] = f64::NAN;
                        assert!(range(&v).2, "f64 NaN at {at} of {n}");
                        let w: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                        assert!(range(&w).2, "f32 NaN at {at} of {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut x = -708.0;
        while x < 709.0 {
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-15, "exp({x}) = {a}, std gives {b}");
            x += 0.0137;
        }
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// The table exponentials (FMA where the CPU has it) within 3e-7 of the f64 exponential
    /// from 0 to the flush point, 0 past it and for −inf; the eight-lane part and the
    /// scalar tail give the same bits for the same value; the shift is subtracted first.
    #[test]
    fn shifted_table_exponentials_are_accurate_and_lane_independent() {
        let xs: Vec<f32> = (0..87_000).map(|k| -(k as f32) * 1e-3).collect();
        let mut out = vec![f32::NAN; xs.len()];
        exp_shifted_f32(&xs, 0.0, &mut out);
        for (&x, &a) in xs.iter().zip(&out) {
            let b = (x as f64).exp();
            assert!(
                ((a as f64 - b) / b).abs() < 3e-7,
                "exp({x}) = {a}, std gives {b}"
            );
        }
        let special = [-87.5f32, -1e4, f32::NEG_INFINITY, 0.0];
        let mut out = [f32::NAN; 4];
        exp_shifted_f32(&special, 0.0, &mut out);
        assert_eq!(out, [0.0, 0.0, 0.0, 1.0]);
        // Nine copies of each value: entries 0..8 run in lanes, entry 8 in the tail.
        for &x in xs.iter().step_by(97) {
            let src = [x + 3.5; 9];
            let mut out = [0.0f32; 9];
            exp_shifted_f32(&src, 3.5, &mut out);
            let lane = out[0].to_bits();
            assert!(out.iter().all(|v| v.to_bits() == lane), "exp({x}): {out:?}");
            let b = ((x + 3.5 - 3.5) as f64).exp();
            assert!(((out[0] as f64 - b) / b).abs() < 3e-7, "shifted exp({x})");
        }
    }

    /// The one-pass exponentials and range: the range equals [`range`]'s (NaN reported, ±inf
    /// kept), every exponential is within 3e-7 of `e^(x − shift)` up to `top` and clamped
    /// at `top` past it, for every length around the eight-lane blocks.
    #[test]
    fn ranged_exponentials_report_the_range_of_one_pass() {
        let mut state = 7u64;
        let mut next = || uniform(&mut state) as f32 * 60.0 - 30.0;
        let (shift, top) = (-4.0f32, 16.0f32);
        // (Lengths around the eight- and sixteen-lane blocks; the special value in the
        // first entry, the middle one and the last.)
        for (n, at) in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100]
            .into_iter()
            .flat_map(|n| [(n, 0), (n, n / 2), (n, n.saturating_sub(1))])
        {
            for special in [
                None,
                Some(f32::NEG_INFINITY),
                Some(f32::INFINITY),
                Some(f32::NAN),
            ] {
                let mut v: Vec<f32> = (0..n).map(|_| next()).collect();
                if let (Some(x), true) = (special, n > 0) {
                    v[at] = x;
                }
                let mut out = vec![f32::NAN; n];
                let Some((hi, lo, nan)) = exp_ranged_f32(&v, shift, top, &mut out) else {
                    assert!(!crate::kernels::batch::has_fma());
                    return;
                };
                let (h, l, bad) = range(&v);
                assert_eq!(nan, bad, "n={n}");
                if !bad {
                    assert_eq!((hi, lo), (h, l), "n={n}");
                    for (&x, &y) in v.iter().zip(&out) {
                        let want = ((x - shift).min(top) as f64).exp();
                        let ok = if want < 1e-37 {
                            y == 0.0
                        } else {
                            ((y as f64 - want) / want).abs() < 3e-7
                        };
                        assert!(ok, "e^({x} - {shift}) = {y}, want {want}");
                    }
                }
            }
        }
    }

    /// The sixteen-lane table exponentials give the eight-lane ones' bits, and the same
    /// range, at every length around the blocks and for values across the whole range of
    /// f32 exponentials: flushed, subnormal-bound, clamped at `top`, ±0, −inf and NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lane_exponentials_equal_the_eight_lane_ones_bit_for_bit() {
        if !crate::kernels::batch::has_avx512() {
            eprintln!("no AVX-512 on this CPU (or EXPSOFTMAX_SIMD caps it): nothing to compare");
            return;
        }
        let mut state = 11u64;
        let specials = [
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            -87.0,
            -86.99,
            -1e30,
            30.0,
        ];
        let mut checked = 0;
        for n in (0..=48).chain([1000, 10_007]) {
            let v: Vec<f32> = (0..n)
                .map(|k| {
                    let u = uniform(&mut state);
                    if u < 0.05 {
                        specials[k % specials.len()]
                    } else {
                        (u * 140.0 - 110.0) as f32
                    }
                })
                .collect();
            for (shift, top) in [(0.0f32, 0.0f32), (-4.0, 16.0), (3.25, 88.0)] {
                let (mut a, mut b) = (vec![1.5f32; n], vec![2.5f32; n]);
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                let (ra, rb) = unsafe {
                    (
                        avx512::exp_ranged(&v, shift, top, &mut a),
                        fma::exp_ranged(&v, shift, top, &mut b),
                    )
                };
                let bits = |x: &[f32]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "ranged n={n} shift={shift} top={top}");
                assert_eq!(ra.2, rb.2, "NaN flag n={n}");
                if !ra.2 {
                    // (Compared as values: ±0 compare equal whichever lane held the zero.)
                    assert!(ra.0 == rb.0 && ra.1 == rb.1, "range n={n}: {ra:?} {rb:?}");
                }
                let shifted: Vec<f32> = v.iter().map(|&x| x.min(shift)).collect();
                // SAFETY: as above.
                unsafe {
                    avx512::exp_shifted(&shifted, shift, &mut a);
                    fma::exp_shifted(&shifted, shift, &mut b);
                }
                assert_eq!(bits(&a), bits(&b), "shifted n={n} shift={shift}");
                checked += n;
            }
        }
        assert!(checked > 30_000);
    }

    #[test]
    fn exp_f32_matches_std_to_a_few_ulp() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, b) = (exp_nonpos_f32(x), (x as f64).exp());
            assert!(
                ((a as f64 - b) / b).abs() < 4e-7,
                "exp({x}) = {a}, std gives {b}"
            );
            x += 0.00731;
        }
        assert_eq!(exp_nonpos_f32(0.0), 1.0);
        assert_eq!(exp_nonpos_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos_f32(-100.0), 0.0);
    }

    #[test]
    fn ln_matches_std_to_a_few_ulp() {
        let mut x = 1e-300;
        while x < 1e300 {
            let (a, b) = (ln_pos(x), x.ln());
            assert!(
                (a - b).abs() <= 4e-16 * b.abs().max(1e-300) + 1e-300,
                "ln({x}) = {a} vs {b}"
            );
            x *= 1.0137;
        }
        for &x in &[1.0, 0.999_999_999, 1.000_000_001, 0.75, 1.5, 2.0, 0.5] {
            assert!((ln_pos(x) - f64::ln(x)).abs() < 2e-16, "ln({x})");
        }
    }

    #[test]
    fn ln_f32_matches_std_to_a_few_ulp() {
        let mut x = f32::MIN_POSITIVE;
        while x < 1e38 {
            let (a, b) = (ln_pos_f32(x) as f64, (x as f64).ln());
            assert!(
                (a - b).abs() <= 3e-7 * b.abs().max(1.0),
                "ln({x}) = {a} vs {b}"
            );
            x *= 1.0137;
        }
        assert_eq!(ln_pos_f32(1.0), 0.0);
    }

    #[test]
    fn logsumexp_is_stable() {
        let mut tmp = [0.0; 3];
        let v = logsumexp(&[1e4, 1e4, f64::NEG_INFINITY], &mut tmp);
        assert!((v - (1e4 + 2f64.ln())).abs() < 1e-9);
        let mut tmp = [0.0; 2];
        assert_eq!(
            logsumexp(&[f64::NEG_INFINITY; 2], &mut tmp),
            f64::NEG_INFINITY
        );
    }
}
