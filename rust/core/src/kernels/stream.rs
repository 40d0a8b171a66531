//! Copies into large outputs with non-temporal stores. An ordinary store first reads the
//! cache line it writes (a "read for ownership"), so writing an output that is not cached
//! moves its bytes over the memory bus twice; a streaming store writes whole lines without
//! reading them. Kernels whose output is far larger than the caches stage each block of it
//! in L1 and stream it out with [`Lines`] as its rows are made, then call [`fence`] before
//! the output is handed to another thread.

use std::mem::MaybeUninit;

/// Bytes of one cache line: the streamed part of a copy covers whole lines only (a line
/// written partly by ordinary stores would be read anyway).
const LINE: usize = 64;

/// Writes a destination front to back in pieces as they are made, whole destination
/// cache lines with non-temporal stores (x86-64; plain stores elsewhere): the streaming
/// stores are spread among the work that makes the pieces rather than issued in one burst
/// that waits on the memory bus, and no piece needs staging beyond its own buffer. The
/// partial lines at the two ends of the destination go by ordinary stores (a line written
/// partly by ordinary stores would be read anyway); the start of a line that a piece ends
/// inside is carried until the next piece completes it.
pub(crate) struct Lines {
    /// Bytes of the destination pushed so far (written or carried).
    pos: usize,
    /// The bytes of the current destination line pushed so far, not yet written.
    carry: [u8; LINE],
}

impl Default for Lines {
    fn default() -> Lines {
        Lines {
            pos: 0,
            carry: [0; LINE],
        }
    }
}

impl Lines {
    /// Appends `src` to what `dst` has received: `dst[p..p + src.len()] = src` where `p`
    /// counts the entries pushed before. Every call passes the same `dst`; it is complete
    /// after the push that reaches its end.
    ///
    /// # Panics
    /// When the pushes run past `dst`'s end.
    #[inline]
    pub(crate) fn push<T: Copy>(&mut self, dst: &mut [MaybeUninit<T>], src: &[T]) {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::batch::has_avx2() {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.push_avx(dst, src) };
        }
        self.push_with::<false, T>(dst, src)
    }

    /// [`push`](Self::push) writing each line with two 32-byte stores (half the store
    /// instructions of SSE2's four).
    ///
    /// # Safety
    /// The CPU has AVX.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    unsafe fn push_avx<T: Copy>(&mut self, dst: &mut [MaybeUninit<T>], src: &[T]) {
        self.push_with::<true, T>(dst, src)
    }

    /// [`push`](Self::push), lines written as [`line`] says for `AVX`.
    #[inline(always)]
    fn push_with<const AVX: bool, T: Copy>(&mut self, dst: &mut [MaybeUninit<T>], src: &[T]) {
        let n = std::mem::size_of_val(dst);
        let m = std::mem::size_of_val(src);
        assert!(
            self.pos + m <= n,
            "stream::Lines: pushed past the destination"
        );
        let d = dst.as_mut_ptr() as *mut u8;
        let s = src.as_ptr() as *const u8;
        // Lines of `dst` start at `head`; the bytes before go by ordinary stores.
        let head = d.align_offset(LINE).min(n);
        let mut i = 0;
        if self.pos < head {
            i = (head - self.pos).min(m);
            // SAFETY: `pos..pos + i` lies within `dst` and `0..i` within `src`; the two do
            // not overlap (one is borrowed mutably).
            unsafe { std::ptr::copy_nonoverlapping(s, d.add(self.pos), i) };
        }
        while i < m {
            let q = self.pos + i;
            let off = (q - head) % LINE;
            if off == 0 && m - i >= LINE {
                // A whole line straight from `src`.
                // SAFETY: `q..q + LINE` is a 64-byte aligned line of `dst` (`q >= head`)
                // and `i..i + LINE` lies within `src`.
                unsafe { line::<AVX>(d.add(q), s.add(i)) };
                i += LINE;
                continue;
            }
            let k = (LINE - off).min(m - i);
            // SAFETY: `i..i + k` lies within `src`, `off..off + k` within the carry.
            unsafe { std::ptr::copy_nonoverlapping(s.add(i), self.carry.as_mut_ptr().add(off), k) };
            i += k;
            if off + k == LINE {
                // SAFETY: the carried line starts at `q - off >= head`, a line boundary
                // of `dst`, and ends within it.
                unsafe { line::<AVX>(d.add(q - off), self.carry.as_ptr()) };
            }
        }
        self.pos += m;
        if self.pos == n && n > head {
            // The partial last line, from the carry.
            let off = (n - head) % LINE;
            // SAFETY: `n - off..n` lies within `dst`; the carry holds those `off` bytes.
            unsafe { std::ptr::copy_nonoverlapping(self.carry.as_ptr(), d.add(n - off), off) };
        }
    }
}

/// Writes the 64 bytes at `src` to the line at `dst` with non-temporal stores (x86-64:
/// two 32-byte stores with `AVX`, else four of 16; plain stores elsewhere).
///
/// # Safety
/// `dst` is 64-byte aligned and both ranges are valid for 64 bytes; with `AVX`, the CPU
/// has AVX (the caller is compiled with it).
#[inline(always)]
unsafe fn line<const AVX: bool>(dst: *mut u8, src: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if AVX {
            for q in (0..LINE).step_by(32) {
                // SAFETY: the caller's contract.
                unsafe {
                    let v = _mm256_loadu_ps(src.add(q) as *const f32);
                    _mm256_stream_ps(dst.add(q) as *mut f32, v);
                }
            }
        } else {
            for q in (0..LINE).step_by(16) {
                // SAFETY: the caller's contract; SSE2 is part of x86-64.
                unsafe {
                    let v = _mm_loadu_si128(src.add(q) as *const __m128i);
                    _mm_stream_si128(dst.add(q) as *mut __m128i, v);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, LINE)
    };
}

/// Orders this thread's streaming stores before its later stores (such as the release of
/// a task's completion to another thread): `sfence` on x86-64, nothing elsewhere.
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole of `src` in one piece.
    fn copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
        Lines::default().push(dst, src);
    }

    /// `dst[off..off + len]` holds `src[..len]` bit for bit and every other entry is
    /// still NaN (nothing written outside).
    fn check(dst: &[MaybeUninit<f32>], src: &[f32], off: usize, len: usize, what: &str) {
        for (i, d) in dst.iter().enumerate() {
            // SAFETY: every entry was initialised.
            let v = unsafe { d.assume_init() };
            if (off..off + len).contains(&i) {
                assert_eq!(v.to_bits(), src[i - off].to_bits(), "{what}");
            } else {
                assert!(v.is_nan(), "{what}: wrote outside at {i}");
            }
        }
    }

    #[test]
    fn copies_every_length_and_alignment() {
        let src: Vec<f32> = (0..700).map(|i| i as f32 * 0.5 - 3.0).collect();
        for off in 0..17 {
            for len in [0, 1, 3, 15, 16, 17, 31, 64, 100, 257, 600] {
                let mut dst = vec![MaybeUninit::new(f32::NAN); 700];
                copy(&mut dst[off..off + len], &src[..len]);
                fence();
                check(&dst, &src, off, len, &format!("off {off} len {len}"));
            }
        }
        // In pieces of every size, each from its own buffer: the same entries.
        for off in 0..17 {
            for step in [1, 5, 16, 23, 100] {
                let mut dst = vec![MaybeUninit::new(f32::NAN); 700];
                let mut lines = Lines::default();
                let len = 600;
                let mut from = 0;
                while from < len {
                    let to = (from + step).min(len);
                    let piece = src[from..to].to_vec();
                    // Both store widths, piece by piece (the 32-byte one where the CPU
                    // runs AVX2; `push` picks it then).
                    if from % 2 == 0 {
                        lines.push_with::<false, f32>(&mut dst[off..off + len], &piece);
                    } else {
                        lines.push(&mut dst[off..off + len], &piece);
                    }
                    from = to;
                }
                fence();
                check(&dst, &src, off, len, &format!("off {off} step {step}"));
            }
        }
        let wide: Vec<f64> = (0..99).map(|i| i as f64 / 7.0).collect();
        let mut dst = vec![MaybeUninit::new(0.0f64); 100];
        copy(&mut dst[1..], &wide);
        // SAFETY: every entry was initialised.
        let got: Vec<f64> = dst[1..]
            .iter()
            .map(|d| unsafe { d.assume_init() })
            .collect();
        assert_eq!(got, wide);
    }
}
