//! The two float types the library accepts. Arithmetic is done in f64 internally
//! (log-normalisers of long chains and products of exponentials need the range); inputs
//! and outputs keep the caller's precision. Kernels whose every step is shift-invariant
//! (a Gibbs conditional: scores, their maximum subtracted, exponentials) may work in the
//! caller's precision, through the arithmetic this trait carries.

use std::ops::{Add, Div, Mul, Sub};

use crate::kernels::logspace::{exp, exp_nonpos_f32};

/// f32 or f64 scores.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + 'static
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    const NAME: &'static str;
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    /// The larger of two values (NaN-free inputs).
    fn max(self, other: Self) -> Self;
    /// `e^x` for `x <= 0` in this precision, vectorisable; exactly 0 below the type's
    /// normal range and for −inf.
    fn exp_nonpos(self) -> Self;
    /// For `x > 0` (normal): the power of two `s` with `x · s` in `[1/2, 1)`, from the
    /// exponent bits alone (no division; `x · s` is exact); 0 for `x <= 0`.
    fn recip_pow2(self) -> Self;
    /// This precision's copy among two copies of the same values.
    fn pick<'a>(wide: &'a [f64], narrow: &'a [f32]) -> &'a [Self];
    /// The slice itself when `Self` is f32 (for kernels written for f32 alone).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// The slice itself when `Self` is f32.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    const NAME: &'static str = "float32";
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const INFINITY: f32 = f32::INFINITY;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn max(self, other: f32) -> f32 {
        if other > self {
            other
        } else {
            self
        }
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f32 {
        exp_nonpos_f32(self)
    }
    #[inline(always)]
    fn recip_pow2(self) -> f32 {
        let e = (self.to_bits() >> 23) & 0xff;
        let s = f32::from_bits(253u32.wrapping_sub(e) << 23);
        if self > 0.0 {
            s
        } else {
            0.0
        }
    }
    #[inline(always)]
    fn pick<'a>(_: &'a [f64], narrow: &'a [f32]) -> &'a [f32] {
        narrow
    }
    #[inline(always)]
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    const NAME: &'static str = "float64";
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const INFINITY: f64 = f64::INFINITY;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    #[inline(always)]
    fn max(self, other: f64) -> f64 {
        if other > self {
            other
        } else {
            self
        }
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f64 {
        exp(self)
    }
    #[inline(always)]
    fn recip_pow2(self) -> f64 {
        let e = (self.to_bits() >> 52) & 0x7ff;
        let s = f64::from_bits(2045u64.wrapping_sub(e) << 52);
        if self > 0.0 {
            s
        } else {
            0.0
        }
    }
    #[inline(always)]
    fn pick<'a>(wide: &'a [f64], _: &'a [f32]) -> &'a [f64] {
        wide
    }
    #[inline(always)]
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}
