//! One-pass grid message updates for small C (f32 messages and arithmetic).
//!
//! The row kernel ([`super::grid::row_update`]) makes one direction's messages of a grid
//! row in passes across the row: the cavities, their products with the tables, the
//! column sums, damping, the normalisation and the write, each through a scratch row. At
//! small C each pass does a handful of operations per entry, so its loads, stores and
//! loop overhead are most of the work. Here a block of eight messages, every label of
//! each, is carried in registers through all of it. Every entry goes through the same
//! operations in the same order as in the row passes, so the messages are the same bits
//! (a test compares the two paths).

use crate::kernels::real::Real;

/// Largest C the one-pass kernel is built for. Measured against the row passes (2
/// threads, per-edge f32 tables, damping 0.5): 1.6× at C = 3, 1.25× at C = 7, 1.2× at
/// C = 10 and 12, though beyond C = 8 a block's `2C` rows no longer all fit in registers.
/// Beyond 12 the `C²` products dominate either way, and each C is compiled eight times.
pub(crate) const MAX_C: usize = 12;

/// Where one direction's messages of a grid row come from and go to. Every buffer holds
/// `C` rows of `w` columns, label-major (`[x][col]`); message `i` of the span leaves the
/// source node in column `i + src_off` and lands in column `i + dst_off` of its target.
#[derive(Clone, Copy)]
pub(crate) struct Direction<'a> {
    pub c: usize,
    pub w: usize,
    /// Messages in the span.
    pub len: usize,
    pub src_off: usize,
    pub dst_off: usize,
    /// The source nodes' potential times their two messages across the other axis.
    pub base: &'a [f32],
    /// The source nodes' message from the side away from the target (the cavity's last
    /// factor).
    pub other: &'a [f32],
    /// Tables: per-edge rows `[k][col]` (stride `w`, indexed by message) when `rows`, else
    /// one table `[k]`; entry `(x, x')` (source label, target label) is `x·C + x'` when
    /// `transposed` (messages going left or up), else `x + x'·C`.
    pub tabs: &'a [f32],
    pub rows: bool,
    pub transposed: bool,
    /// The previous iterate's messages at the targets (damping and the change read them),
    /// under flooding (`colour` None).
    pub prev: &'a [f32],
    /// `Some(first)`: one colour of a checkerboard sweep. Only messages `first`,
    /// `first + 2`, … are written, and the previous messages are those `dst` holds (the
    /// latest of that colour; `prev` is not read).
    pub colour: Option<usize>,
}

/// Where a span's messages go: `dst` (`C` rows of `w`), and where the previous ones are
/// read (`prev`: `dst` itself for one colour). One raw pointer each, since for a colour
/// both name the same rows.
#[derive(Clone, Copy)]
struct Target {
    dst: *mut f32,
    prev: *const f32,
    /// Which messages are written: `i % 2 == parity`, or every one (`None`).
    parity: Option<usize>,
}

/// Calls `$f::<C, ROWS, TR>($args)` for the direction's shape: `C` labels, per-edge table
/// rows or one table (`ROWS`), tables read transposed (`TR`, messages going left or up:
/// entry `(x, x')` at `x·C + x'`) or as stored (`x + x'·C`).
macro_rules! for_shape {
    ($d:expr, $f:ident, $($arg:expr),*) => {
        match ($d.c, $d.rows, $d.transposed) {
            (2, true, true) => $f::<2, true, true>($($arg),*),
            (2, true, false) => $f::<2, true, false>($($arg),*),
            (2, false, true) => $f::<2, false, true>($($arg),*),
            (2, false, false) => $f::<2, false, false>($($arg),*),
            (3, true, true) => $f::<3, true, true>($($arg),*),
            (3, true, false) => $f::<3, true, false>($($arg),*),
            (3, false, true) => $f::<3, false, true>($($arg),*),
            (3, false, false) => $f::<3, false, false>($($arg),*),
            (4, true, true) => $f::<4, true, true>($($arg),*),
            (4, true, false) => $f::<4, true, false>($($arg),*),
            (4, false, true) => $f::<4, false, true>($($arg),*),
            (4, false, false) => $f::<4, false, false>($($arg),*),
            (5, true, true) => $f::<5, true, true>($($arg),*),
            (5, true, false) => $f::<5, true, false>($($arg),*),
            (5, false, true) => $f::<5, false, true>($($arg),*),
            (5, false, false) => $f::<5, false, false>($($arg),*),
            (6, true, true) => $f::<6, true, true>($($arg),*),
            (6, true, false) => $f::<6, true, false>($($arg),*),
            (6, false, true) => $f::<6, false, true>($($arg),*),
            (6, false, false) => $f::<6, false, false>($($arg),*),
            (7, true, true) => $f::<7, true, true>($($arg),*),
            (7, true, false) => $f::<7, true, false>($($arg),*),
            (7, false, true) => $f::<7, false, true>($($arg),*),
            (7, false, false) => $f::<7, false, false>($($arg),*),
            (8, true, true) => $f::<8, true, true>($($arg),*),
            (8, true, false) => $f::<8, true, false>($($arg),*),
            (8, false, true) => $f::<8, false, true>($($arg),*),
            (8, false, false) => $f::<8, false, false>($($arg),*),
            (9, true, true) => $f::<9, true, true>($($arg),*),
            (9, true, false) => $f::<9, true, false>($($arg),*),
            (9, false, true) => $f::<9, false, true>($($arg),*),
            (9, false, false) => $f::<9, false, false>($($arg),*),
            (10, true, true) => $f::<10, true, true>($($arg),*),
            (10, true, false) => $f::<10, true, false>($($arg),*),
            (10, false, true) => $f::<10, false, true>($($arg),*),
            (10, false, false) => $f::<10, false, false>($($arg),*),
            (11, true, true) => $f::<11, true, true>($($arg),*),
            (11, true, false) => $f::<11, true, false>($($arg),*),
            (11, false, true) => $f::<11, false, true>($($arg),*),
            (11, false, false) => $f::<11, false, false>($($arg),*),
            (12, true, true) => $f::<12, true, true>($($arg),*),
            (12, true, false) => $f::<12, true, false>($($arg),*),
            (12, false, true) => $f::<12, false, true>($($arg),*),
            (12, false, false) => $f::<12, false, false>($($arg),*),
            (c, _, _) => unreachable!("one-pass grid messages are built for C <= {MAX_C}, not {c}"),
        }
    };
}

/// Writes the direction's normalised (and damped, `damping > 0`) messages into `dst`
/// (`C` rows of `w`, the target row's block) and returns the largest change against
/// `prev` when `need_change` (else 0). `2 <= C <= MAX_C`.
pub(crate) fn messages(d: Direction<'_>, dst: &mut [f32], damping: f64, need_change: bool) -> f64 {
    check(&d, dst);
    let damp = Damp::new(damping);
    let dst = dst.as_mut_ptr();
    let t = Target {
        dst,
        prev: if d.colour.is_some() {
            dst
        } else {
            d.prev.as_ptr()
        },
        parity: d.colour.map(|first| first % 2),
    };
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above); `check` asserted the bounds.
        return unsafe { for_shape!(d, avx_span, &d, t, damp, need_change) };
    }
    // SAFETY: `check` asserted the bounds.
    unsafe { for_shape!(d, span, &d, t, damp, need_change) }
}

/// The bounds every index of [`block`] lies in: label rows `x·w + off + i` with
/// `off + i < w`, table entries `k·w + i` (or `k`) with `k < C²`.
fn check(d: &Direction<'_>, dst: &[f32]) {
    let (c, w, len) = (d.c, d.w, d.len);
    assert!((2..=MAX_C).contains(&c));
    assert!(len + d.src_off.max(d.dst_off) <= w);
    assert!(d.base.len() >= c * w && d.other.len() >= c * w);
    assert!(dst.len() >= c * w && (d.colour.is_some() || d.prev.len() >= c * w));
    assert!(len == 0 || d.tabs.len() >= if d.rows { (c * c - 1) * w + len } else { c * c });
}

/// [`messages`] without vector instructions of its own (the compiler's, for the CPU's
/// baseline): eight messages at a time.
///
/// # Safety
/// The bounds of [`check`] hold.
#[inline(always)]
unsafe fn span<const C: usize, const ROWS: bool, const TR: bool>(
    d: &Direction<'_>,
    t: Target,
    damp: Damp,
    need_change: bool,
) -> f64 {
    let mut change = [0.0f64; 8];
    let mut i0 = 0;
    while i0 + 8 <= d.len {
        // SAFETY: `i0 + 8 <= len`, in the caller's bounds.
        unsafe { block::<C, ROWS, TR, 8>(d, t, i0, damp, need_change, &mut change) };
        i0 += 8;
    }
    // SAFETY: `i0 <= len`.
    let tail = unsafe { tail::<C, ROWS, TR>(d, t, i0, damp, need_change) };
    change.into_iter().fold(tail, f64::max)
}

/// Messages `i0..len`, one at a time; their largest change.
///
/// # Safety
/// `i0 <= d.len` and the bounds of [`check`] hold.
#[inline(always)]
unsafe fn tail<const C: usize, const ROWS: bool, const TR: bool>(
    d: &Direction<'_>,
    t: Target,
    i0: usize,
    damp: Damp,
    need_change: bool,
) -> f64 {
    let mut change = [0.0f64];
    for i in i0..d.len {
        // SAFETY: `i < len`, in the caller's bounds.
        unsafe { block::<C, ROWS, TR, 1>(d, t, i, damp, need_change, &mut change) };
    }
    change[0]
}

/// `N` lanes of `s` from `at`.
///
/// # Safety
/// `at + N <= s.len()`.
#[inline(always)]
unsafe fn load<const N: usize>(s: &[f32], at: usize) -> [f32; N] {
    debug_assert!(at + N <= s.len());
    // SAFETY: in bounds by the caller's contract; `[f32; N]` may be read unaligned.
    unsafe { s.as_ptr().add(at).cast::<[f32; N]>().read_unaligned() }
}

/// The damping rule (see [`super::grid::damp_row`]), decided once per call.
#[derive(Clone, Copy)]
enum Damp {
    None,
    /// Damping 0.5: the geometric mean, one square root.
    Half,
    /// `t^keep · p^damping` in the log domain.
    Mix {
        keep: f32,
        damping: f32,
    },
}

impl Damp {
    fn new(damping: f64) -> Damp {
        match damping {
            d if d <= 0.0 => Damp::None,
            0.5 => Damp::Half,
            d => Damp::Mix {
                keep: (1.0 - d) as f32,
                damping: d as f32,
            },
        }
    }

    /// The damped message entry from the scaled fresh one `t` and the previous one `p`.
    #[inline(always)]
    fn mix(self, t: f32, p: f32) -> f32 {
        match self {
            Damp::None => t,
            Damp::Half => (t * p).sqrt(),
            Damp::Mix { keep, damping } => super::grid::mix_f32(t, p, keep, damping),
        }
    }
}

/// Messages `i0..i0 + N` of the span; their changes are folded into `change` (lane by
/// lane) when `need_change`.
///
/// # Safety
/// `i0 + N <= d.len`, and the bounds of [`check`] hold.
#[inline(always)]
unsafe fn block<const C: usize, const ROWS: bool, const TR: bool, const N: usize>(
    d: &Direction<'_>,
    t: Target,
    i0: usize,
    damp: Damp,
    need_change: bool,
    change: &mut [f64; N],
) {
    let w = d.w;
    // Label rows `x·w + off + i0 + l` with `off + i0 + N <= w`.
    let row = |s: &[f32], x: usize, off: usize| {
        // SAFETY: `x < C` (`C²` for table rows) and `off + i0 + N <= w` at every call: in
        // the bounds of `check`.
        unsafe { load::<N>(s, x * w + off + i0) }
    };
    // Cavities: the source's potential and three messages (all but the target's).
    let mut q = [[0.0f32; N]; C];
    for x in 0..C {
        let (b, o) = (row(d.base, x, d.src_off), row(d.other, x, d.src_off));
        for l in 0..N {
            q[x][l] = b[l] * o[l];
        }
    }
    // out[x'] = Σ_x t(x, x') q[x], summed from zero in label order, and the column sums.
    let mut out = [[0.0f32; N]; C];
    let mut sum = [0.0f32; N];
    for xo in 0..C {
        for x in 0..C {
            let k = if TR { x * C + xo } else { x + xo * C };
            let t = match ROWS {
                // Table rows `k < C²` are label rows too (`C²` of them, see `check`).
                true => row(d.tabs, k, 0),
                // SAFETY: `k < C²` (see `check`).
                false => [unsafe { *d.tabs.get_unchecked(k) }; N],
            };
            for l in 0..N {
                out[xo][l] += t[l] * q[x][l];
            }
        }
        for l in 0..N {
            sum[l] += out[xo][l];
        }
    }
    let prev = |xo: usize| {
        // SAFETY: a label row of the target block, in the bounds of `check`.
        unsafe {
            t.prev
                .add(xo * w + d.dst_off + i0)
                .cast::<[f32; N]>()
                .read_unaligned()
        }
    };
    // Damping: brought near sum 1 by a power of two, mixed with the previous message,
    // and summed again for the exact normalisation.
    if !matches!(damp, Damp::None) {
        let mut scale = [0.0f32; N];
        for l in 0..N {
            scale[l] = sum[l].recip_pow2();
            sum[l] = 0.0;
        }
        for xo in 0..C {
            let p = prev(xo);
            for l in 0..N {
                out[xo][l] = damp.mix(out[xo][l] * scale[l], p[l]);
                sum[l] += out[xo][l];
            }
        }
    }
    let mut norm = [0.0f32; N];
    for l in 0..N {
        norm[l] = if sum[l] > 0.0 { 1.0 / sum[l] } else { 0.0 };
    }
    for xo in 0..C {
        let at = xo * w + d.dst_off + i0;
        let mut v = [0.0f32; N];
        for l in 0..N {
            v[l] = out[xo][l] * norm[l];
        }
        if let Some(parity) = t.parity {
            // One colour: the other messages keep what they hold.
            let p = prev(xo);
            for l in 0..N {
                if (i0 + l) % 2 != parity {
                    v[l] = p[l];
                }
            }
        }
        if need_change {
            let p = prev(xo);
            for l in 0..N {
                change[l] = change[l].max((v[l] as f64 - p[l] as f64).abs());
            }
        }
        // SAFETY: a label row of the target block, in the bounds of `check`.
        unsafe { t.dst.add(at).cast::<[f32; N]>().write_unaligned(v) };
    }
}

/// [`span`] with AVX2 intrinsics, eight messages to a register: the compiler's own
/// vectorisation of [`block`] kept the label rows in memory and shuffled lanes.
///
/// # Safety
/// The CPU has AVX2 and the bounds of [`check`] hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn avx_span<const C: usize, const ROWS: bool, const TR: bool>(
    d: &Direction<'_>,
    t: Target,
    damp: Damp,
    need_change: bool,
) -> f64 {
    use std::arch::x86_64::*;
    let w = d.w;
    let ld = |s: &[f32], at: usize| {
        debug_assert!(at + 8 <= s.len());
        // SAFETY: every `at` below is in the bounds of `check` (see `block`).
        unsafe { _mm256_loadu_ps(s.as_ptr().add(at)) }
    };
    let zero = _mm256_setzero_ps();
    let even = _mm256_castsi256_ps(_mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
    let odd = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
    // One colour: the lanes of the block from `i0` whose messages are written.
    let colour = |i0: usize| {
        t.parity.map(|p| {
            if (i0 + p).is_multiple_of(2) {
                even
            } else {
                odd
            }
        })
    };
    let mut change = [_mm256_setzero_pd(); 2];
    // Messages `i0..i0 + 8`; where `keep` is given, only its lanes are written (the others
    // are rewritten with what `dst` holds, which is `prev` there).
    let mut block = |i0: usize, keep: Option<__m256>| {
        // (Index loops over the labels: with `C` known the compiler unrolls them and
        // keeps `q` and `out` in registers; iterator loops with a `match` inside stayed
        // loops over rows stored on the stack.)
        let mut q = [zero; C];
        for x in 0..C {
            let at = x * w + d.src_off + i0;
            q[x] = _mm256_mul_ps(ld(d.base, at), ld(d.other, at));
        }
        let mut out = [zero; C];
        let mut sum = zero;
        for xo in 0..C {
            for x in 0..C {
                let k = if TR { x * C + xo } else { x + xo * C };
                let tab = match ROWS {
                    true => ld(d.tabs, k * w + i0),
                    // SAFETY: `k < C²` (see `check`).
                    false => _mm256_set1_ps(unsafe { *d.tabs.get_unchecked(k) }),
                };
                out[xo] = _mm256_add_ps(out[xo], _mm256_mul_ps(tab, q[x]));
            }
            sum = _mm256_add_ps(sum, out[xo]);
        }
        // SAFETY: a label row of the target block, in the bounds of `check`.
        let prev = |xo: usize| unsafe { _mm256_loadu_ps(t.prev.add(xo * w + d.dst_off + i0)) };
        // `recip_pow2`: 2^(126 − exponent) from the bits, 0 where the sum is not > 0.
        let recip_pow2 = |sum: __m256| {
            let e = _mm256_and_si256(
                _mm256_srli_epi32::<23>(_mm256_castps_si256(sum)),
                _mm256_set1_epi32(0xff),
            );
            let s = _mm256_slli_epi32::<23>(_mm256_sub_epi32(_mm256_set1_epi32(253), e));
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(sum, zero);
            _mm256_and_ps(_mm256_castsi256_ps(s), positive)
        };
        match damp {
            Damp::None => {}
            Damp::Half => {
                let scale = recip_pow2(sum);
                sum = zero;
                for xo in 0..C {
                    let fresh = _mm256_mul_ps(out[xo], scale);
                    out[xo] = _mm256_sqrt_ps(_mm256_mul_ps(fresh, prev(xo)));
                    sum = _mm256_add_ps(sum, out[xo]);
                }
            }
            Damp::Mix { .. } => {
                let scale = recip_pow2(sum);
                sum = zero;
                for xo in 0..C {
                    let (mut tl, mut pl) = ([0.0f32; 8], [0.0f32; 8]);
                    // SAFETY: eight-lane arrays.
                    unsafe {
                        _mm256_storeu_ps(tl.as_mut_ptr(), _mm256_mul_ps(out[xo], scale));
                        _mm256_storeu_ps(pl.as_mut_ptr(), prev(xo));
                    }
                    for (t, &p) in tl.iter_mut().zip(&pl) {
                        *t = damp.mix(*t, p);
                    }
                    // SAFETY: an eight-lane array.
                    out[xo] = unsafe { _mm256_loadu_ps(tl.as_ptr()) };
                    sum = _mm256_add_ps(sum, out[xo]);
                }
            }
        }
        let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(sum, zero);
        let norm = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), sum), positive);
        for (xo, &o) in out.iter().enumerate() {
            let mut v = _mm256_mul_ps(o, norm);
            if let Some(keep) = keep {
                v = _mm256_blendv_ps(prev(xo), v, keep);
            }
            if need_change {
                let p = prev(xo);
                let sign = _mm256_set1_pd(-0.0);
                let halves = [
                    (_mm256_castps256_ps128(v), _mm256_castps256_ps128(p)),
                    (_mm256_extractf128_ps::<1>(v), _mm256_extractf128_ps::<1>(p)),
                ];
                for (ch, (v, p)) in change.iter_mut().zip(halves) {
                    let diff = _mm256_sub_pd(_mm256_cvtps_pd(v), _mm256_cvtps_pd(p));
                    // max(|diff|, change): the running maximum stays where `diff` is NaN,
                    // as `f64::max` keeps it.
                    *ch = _mm256_max_pd(_mm256_andnot_pd(sign, diff), *ch);
                }
            }
            // SAFETY: a label row of the target block, in the bounds of `check`.
            unsafe { _mm256_storeu_ps(t.dst.add(xo * w + d.dst_off + i0), v) };
        }
    };
    let mut i0 = 0;
    while i0 + 8 <= d.len {
        block(i0, colour(i0));
        i0 += 8;
    }
    if i0 < d.len && d.len >= 8 {
        // The tail as the span's last eight messages, of which the first `8 − rest` were
        // just written: a scalar tail had cost as much as a fifth of a 64-wide row. Under
        // flooding they are written again with the same bits (their inputs are all in
        // `old`); for one colour their lanes keep what `dst` now holds.
        let rest = (d.len - i0) as i32;
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let fresh = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(7 - rest)));
        let last = d.len - 8;
        block(last, colour(last).map(|c| _mm256_and_ps(c, fresh)));
        i0 = d.len;
    }
    let mut lanes = [0.0f64; 8];
    // SAFETY: two four-lane stores into an eight-lane array.
    unsafe {
        _mm256_storeu_pd(lanes.as_mut_ptr(), change[0]);
        _mm256_storeu_pd(lanes.as_mut_ptr().add(4), change[1]);
    }
    // SAFETY: `i0 <= len`.
    let tail = unsafe { tail::<C, ROWS, TR>(d, t, i0, damp, need_change) };
    lanes.into_iter().fold(tail, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rng::Rng;

    /// The AVX2 kernel and the portable one write the same bits and measure the same
    /// change, for every shape, damping rule and schedule, over spans with and without a
    /// tail; they write every message of the span (one colour: every other one) and
    /// nothing else.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_and_portable_spans_agree_bit_for_bit() {
        if !crate::kernels::batch::has_avx2() {
            return;
        }
        let mut rng = Rng::stream(5, &[]);
        let mut draw = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
            (0..n)
                .map(|_| (lo + (hi - lo) * rng.uniform()) as f32)
                .collect()
        };
        let w = 29;
        for c in 2..=MAX_C {
            let (base, other) = (draw(c * w, 0.0, 2.0), draw(c * w, 0.0, 1.0));
            let (prev, tabs) = (draw(c * w, 0.01, 1.0), draw(c * c * w, 0.05, 3.0));
            for (rows, transposed, (len, src_off, dst_off)) in [
                (true, true, (28, 0, 1)),
                (true, false, (28, 1, 0)),
                (false, true, (29, 0, 0)),
                (false, false, (16, 0, 0)),
            ] {
                for colour in [None, Some(0), Some(1)] {
                    let d = Direction {
                        c,
                        w,
                        len,
                        src_off,
                        dst_off,
                        base: &base,
                        other: &other,
                        tabs: &tabs,
                        rows,
                        transposed,
                        prev: if colour.is_some() { &[] } else { &prev },
                        colour,
                    };
                    for damping in [0.0, 0.5, 0.25] {
                        for need_change in [false, true] {
                            let damp = Damp::new(damping);
                            let (mut a, mut b) = (prev.clone(), prev.clone());
                            check(&d, &a);
                            let target = |dst: &mut Vec<f32>| Target {
                                dst: dst.as_mut_ptr(),
                                prev: if colour.is_some() {
                                    dst.as_ptr()
                                } else {
                                    prev.as_ptr()
                                },
                                parity: colour.map(|f| f % 2),
                            };
                            let (ta, tb) = (target(&mut a), target(&mut b));
                            // SAFETY: the CPU has AVX2 (checked above); `check` passed.
                            let (ca, cb) = unsafe {
                                (
                                    for_shape!(d, avx_span, &d, ta, damp, need_change),
                                    for_shape!(d, span, &d, tb, damp, need_change),
                                )
                            };
                            let at = format!(
                                "C {c}, rows {rows}, len {len}, {colour:?}, damping {damping}"
                            );
                            assert_eq!(ca.to_bits(), cb.to_bits(), "{at}");
                            assert_eq!(ca > 0.0, need_change, "{at}");
                            let bits =
                                |m: &[f32]| m.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&a), bits(&b), "{at}");
                            // Exactly the span's messages of the colour changed.
                            for x in 0..c {
                                for col in 0..w {
                                    let i = col as isize - dst_off as isize;
                                    let ours = (0..len as isize).contains(&i)
                                        && colour.is_none_or(|f| i as usize % 2 == f % 2);
                                    let at = x * w + col;
                                    assert_eq!(a[at] != prev[at], ours, "{at}: {x}, {col}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
