//! Changing a block's memory layout between the per-item form the inputs and outputs use
//! (`[col][k]`: each edge's or node's entries together) and the across-columns form the
//! grid kernels compute in (`[k][col]`: one entry of every column in a row, so that loops
//! over the columns fill vectors whatever C is).

/// Lanes per block: one AVX2 vector of f32 (two of f64).
const LANES: usize = 8;

/// `dst[k * stride + col] = f(src[col * m + k])` for `col < n = src.len() / m` and `k < m`
/// (`stride ≥ n`: rows may be padded, e.g. to whole vectors).
///
/// Eight columns at a time, so that every store is a whole vector of consecutive entries
/// (the strided loads stay within a block of `8 m` entries, in L1); an entry-by-entry
/// transpose stores to `m` different cache lines in turn, one scalar at a time.
/// Inlined into the caller's SIMD copy.
#[inline(always)]
pub(crate) fn transpose<S: Copy, D: Copy>(
    src: &[S],
    m: usize,
    dst: &mut [D],
    stride: usize,
    f: impl Fn(S) -> D,
) {
    if m == 0 {
        return;
    }
    let n = src.len() / m;
    debug_assert!(stride >= n && dst.len() >= (m - 1) * stride + n);
    let full = n - n % LANES;
    for (b, blk) in src[..full * m].chunks_exact(LANES * m).enumerate() {
        let col0 = b * LANES;
        for k in 0..m {
            // (A loop, not `array::from_fn`, which is not always inlined into the
            // caller's SIMD copy.)
            let mut v = [f(blk[k]); LANES];
            for (j, x) in v.iter_mut().enumerate().skip(1) {
                *x = f(blk[j * m + k]);
            }
            dst[k * stride + col0..k * stride + col0 + LANES].copy_from_slice(&v);
        }
    }
    for col in full..n {
        for (k, &x) in src[col * m..(col + 1) * m].iter().enumerate() {
            dst[k * stride + col] = f(x);
        }
    }
}

/// The inverse of [`transpose`]: `dst[col * m + k] = f(col, k, src[k * stride + col])` for
/// `col < n` and `k < m` (`stride ≥ n`).
///
/// Eight columns at a time: each source row is read eight consecutive entries at a time,
/// and the strided stores of a block stay within its `8 m` entries of `dst`.
#[inline(always)]
pub(crate) fn untranspose<S: Copy, D: Copy>(
    src: &[S],
    stride: usize,
    n: usize,
    m: usize,
    dst: &mut [D],
    f: impl Fn(usize, usize, S) -> D,
) {
    debug_assert!(stride >= n && dst.len() >= n * m);
    let full = n - n % LANES;
    for (b, blk) in dst[..full * m].chunks_exact_mut(LANES * m).enumerate() {
        let col0 = b * LANES;
        // The block's eight output columns, each `m` long.
        let (c0, rest) = blk.split_at_mut(m);
        let (c1, rest) = rest.split_at_mut(m);
        let (c2, rest) = rest.split_at_mut(m);
        let (c3, rest) = rest.split_at_mut(m);
        let (c4, rest) = rest.split_at_mut(m);
        let (c5, rest) = rest.split_at_mut(m);
        let (c6, c7) = rest.split_at_mut(m);
        let mut cols: [&mut [D]; LANES] = [c0, c1, c2, c3, c4, c5, c6, c7];
        for (k, row) in src.chunks(stride).take(m).enumerate() {
            let s: &[S; LANES] = row[col0..col0 + LANES].try_into().expect("a block row");
            for (j, col) in cols.iter_mut().enumerate() {
                // SAFETY: every `col` is exactly `m` entries long (`blk` is `8 m` long)
                // and `k < m` (`take(m)`). (Checked indexing here costs a compare per
                // store against eight lengths the compiler cannot prove equal.)
                unsafe { *col.get_unchecked_mut(k) = f(col0 + j, k, s[j]) };
            }
        }
    }
    for col in full..n {
        for (k, d) in dst[col * m..(col + 1) * m].iter_mut().enumerate() {
            *d = f(col, k, src[k * stride + col]);
        }
    }
}

/// [`transpose`] of f32 entries as they are: `dst[k * stride + col] = src[col * m + k]`,
/// in 8 x 8 blocks transposed in AVX registers where the CPU has them (eight vector loads,
/// eight vector stores and 24 shuffles per 64 entries, against 64 scalar loads or inserts).
#[inline(always)]
pub(crate) fn transpose_f32(src: &[f32], m: usize, dst: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if m >= LANES && src.len() / m >= LANES && crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { avx::transpose(src, m, dst, stride) };
        return;
    }
    transpose(src, m, dst, stride, |x| x)
}

/// An edge row's pair products, normalised, into edge-major rows: `dst[col * c² + s c + d]
/// = a[s sa + col] · t[(s c + d) st + col] · b[d sb + col] · scale[col]` for `col < n` (the
/// class-pair-major table rows `t` and the two endpoints' class-major cavities `a`, `b`,
/// each with its row stride), without forming the class-pair-major products first; 8 x 8
/// blocks in AVX registers where the CPU has them.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn pair_rows_f32(
    t: &[f32],
    st: usize,
    a: &[f32],
    sa: usize,
    b: &[f32],
    sb: usize,
    c: usize,
    n: usize,
    scale: &[f32],
    dst: &mut [f32],
) {
    let cc = c * c;
    #[cfg(target_arch = "x86_64")]
    if cc >= LANES && n >= LANES && crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { avx::pair_rows(t, st, a, sa, b, sb, c, n, scale, dst) };
        return;
    }
    for (col, row) in dst.chunks_exact_mut(cc).take(n).enumerate() {
        for (k, o) in row.iter_mut().enumerate() {
            let (s, d) = (k / c, k % c);
            *o = a[s * sa + col] * t[k * st + col] * b[d * sb + col] * scale[col];
        }
    }
}

/// The block starts `0, 8, 16, …` along an axis of `len ≥ 8` entries, the last one moved
/// back to `len − 8` so that it is whole: blocks overlap rather than leave a scalar tail
/// (an overlapped entry is written twice with the same value).
#[cfg(target_arch = "x86_64")]
fn block_starts(len: usize) -> impl Iterator<Item = usize> {
    (0..len.div_ceil(LANES)).map(move |b| (b * LANES).min(len - LANES))
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx {
    use super::{block_starts, LANES};
    use std::arch::x86_64::*;

    /// The transpose of the 8 x 8 block whose rows are `r` (the CPU has AVX).
    #[inline(always)]
    pub(crate) unsafe fn t8(r: [__m256; LANES]) -> [__m256; LANES] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// See [`super::transpose_f32`]; needs `m ≥ 8` and at least 8 columns.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose(src: &[f32], m: usize, dst: &mut [f32], stride: usize) {
        let n = src.len() / m;
        assert!(m >= LANES && n >= LANES && stride >= n && dst.len() >= (m - 1) * stride + n);
        for c0 in block_starts(n) {
            for k0 in block_starts(m) {
                let mut r = [_mm256_setzero_ps(); LANES];
                for (j, v) in r.iter_mut().enumerate() {
                    // SAFETY: (c0 + j) m + k0 + 7 ≤ (n − 1) m + m − 1 < src.len().
                    *v = unsafe { _mm256_loadu_ps(src.as_ptr().add((c0 + j) * m + k0)) };
                }
                for (i, v) in t8(r).into_iter().enumerate() {
                    // SAFETY: (k0 + i) stride + c0 + 7 ≤ (m − 1) stride + n − 1 < dst.len().
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add((k0 + i) * stride + c0), v) };
                }
            }
        }
    }

    /// See [`super::pair_rows_f32`]; needs `c² ≥ 8` and `n ≥ 8`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pair_rows(
        t: &[f32],
        st: usize,
        a: &[f32],
        sa: usize,
        b: &[f32],
        sb: usize,
        c: usize,
        n: usize,
        scale: &[f32],
        dst: &mut [f32],
    ) {
        let cc = c * c;
        assert!(cc >= LANES && n >= LANES && st >= n && sa >= n && sb >= n);
        assert!(t.len() >= (cc - 1) * st + n && a.len() >= (c - 1) * sa + n);
        assert!(b.len() >= (c - 1) * sb + n && scale.len() >= n && dst.len() >= n * cc);
        for c0 in block_starts(n) {
            // SAFETY: c0 + 7 ≤ n − 1 < scale.len().
            let sc = unsafe { _mm256_loadu_ps(scale.as_ptr().add(c0)) };
            for k0 in block_starts(cc) {
                let mut r = [_mm256_setzero_ps(); LANES];
                for (i, v) in r.iter_mut().enumerate() {
                    let k = k0 + i;
                    let (s, d) = (k / c, k % c);
                    // SAFETY: the column block c0..c0 + 8 lies within the first n ≤ stride
                    // entries of a row, and s, d < c and k < c², whose last rows the
                    // asserts above cover.
                    let (x, y, z) = unsafe {
                        (
                            _mm256_loadu_ps(a.as_ptr().add(s * sa + c0)),
                            _mm256_loadu_ps(t.as_ptr().add(k * st + c0)),
                            _mm256_loadu_ps(b.as_ptr().add(d * sb + c0)),
                        )
                    };
                    *v = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(x, y), z), sc);
                }
                for (j, v) in t8(r).into_iter().enumerate() {
                    // SAFETY: (c0 + j) c² + k0 + 7 ≤ (n − 1) c² + c² − 1 < dst.len().
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add((c0 + j) * cc + k0), v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_back_for_every_tail() {
        for n in [0, 1, 7, 8, 9, 17, 33] {
            for m in [1, 3, 9, 49] {
                let src: Vec<f32> = (0..n * m).map(|i| i as f32).collect();
                // Into rows of a wider stride (padding left alone), and back, each entry
                // offset by its column and row.
                let stride = n + 3;
                let mut wide = vec![-1.0f64; m * stride];
                transpose(&src, m, &mut wide, stride, |x| x as f64 * 2.0);
                for k in 0..m {
                    for col in 0..stride {
                        let want = if col < n {
                            src[col * m + k] as f64 * 2.0
                        } else {
                            -1.0
                        };
                        assert_eq!(wide[k * stride + col], want);
                    }
                }
                let mut back = vec![0.0f32; n * m];
                untranspose(&wide, stride, n, m, &mut back, |col, k, x| {
                    (x / 2.0) as f32 + (col + 10 * k) as f32
                });
                for col in 0..n {
                    for k in 0..m {
                        assert_eq!(back[col * m + k], src[col * m + k] + (col + 10 * k) as f32);
                    }
                }
            }
        }
    }

    #[test]
    fn register_transposes_match_the_plain_ones() {
        // Both sides of the 8 x 8 threshold, tails of every length, padded strides.
        for n in [1, 7, 8, 9, 15, 16, 17, 95, 96] {
            for m in [4, 8, 9, 15, 16, 49] {
                let src: Vec<f32> = (0..n * m).map(|i| i as f32 * 0.5 - 3.0).collect();
                let stride = n + 5;
                let (mut a, mut b) = (vec![-1.0f32; m * stride], vec![-1.0f32; m * stride]);
                transpose_f32(&src, m, &mut a, stride);
                transpose(&src, m, &mut b, stride, |x| x);
                assert_eq!(a, b, "transpose n = {n}, m = {m}");
                let scale: Vec<f32> = (0..n).map(|col| 1.0 + col as f32 * 0.25).collect();
                let mut x = vec![0.0f32; n * m];
                untranspose(&a, stride, n, m, &mut x, |col, _, v| v * scale[col]);
                for col in 0..n {
                    for k in 0..m {
                        assert_eq!(x[col * m + k], src[col * m + k] * scale[col]);
                    }
                }
                // Pair products of c classes (c² = m where m is a square).
                let c = (m as f64).sqrt() as usize;
                if c * c == m {
                    let (sa, sb) = (n + 2, n + 1);
                    let pa: Vec<f32> = (0..c * sa).map(|i| 1.0 + i as f32 * 0.125).collect();
                    let pb: Vec<f32> = (0..c * sb).map(|i| 2.0 - i as f32 * 0.0625).collect();
                    let mut got = vec![0.0f32; n * m];
                    pair_rows_f32(&a, stride, &pa, sa, &pb, sb, c, n, &scale, &mut got);
                    for col in 0..n {
                        for k in 0..m {
                            let (s, d) = (k / c, k % c);
                            let want = pa[s * sa + col]
                                * a[k * stride + col]
                                * pb[d * sb + col]
                                * scale[col];
                            assert_eq!(got[col * m + k], want, "pairs n = {n}, c = {c}");
                        }
                    }
                }
            }
        }
    }
}
