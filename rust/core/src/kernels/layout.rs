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
}
