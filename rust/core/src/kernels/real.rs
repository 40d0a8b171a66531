//! The two float types the library accepts. All arithmetic is done in f64 internally
//! (log-normalisers of long chains and products of exponentials need the range); inputs
//! and outputs keep the caller's precision.

/// f32 or f64 scores.
pub trait Real: Copy + Send + Sync + PartialOrd + 'static + std::fmt::Debug {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    const NAME: &'static str;
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
}
