//! What the kernels' tests share (each kernel file tests itself against the composed candle ops it
//! replaces, values and gradients), and the test of the vectorizable `exp`.

use super::*;
use candle_core::{Device, Var};

pub(super) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// The vectorizable `exp` against f64's over the range softmax and SiLU use, at 2·10⁶ points, and its
/// ends: −∞ and anything below −87.34 give exactly 0, NaN stays NaN.
#[test]
fn exp_is_within_two_ulp_of_the_true_value() {
    let mut worst = 0f64;
    for i in 0..=2_000_000 {
        let x = -87.0 + 175.0 * i as f64 / 2e6;
        let (got, want) = (exp(x as f32) as f64, (x as f32 as f64).exp());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 2.4e-7, "worst relative error {worst:e}");
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-100.0), 0.0);
    assert!(exp(f32::NAN).is_nan());
}

/// Value and gradients (w.r.t. every var, under a random linear read-out) of `fused` and `reference`.
pub(super) fn check(
    vars: &[&Var],
    fused: impl Fn() -> Result<Tensor>,
    reference: impl Fn() -> Result<Tensor>,
    tol: f32,
) {
    let (a, b) = (fused().unwrap(), reference().unwrap());
    assert_eq!(a.dims(), b.dims());
    assert!(max_abs_diff(&a, &b) < tol, "values differ by {}", max_abs_diff(&a, &b));
    let probe = Tensor::randn(0f32, 1.0, a.shape(), &Device::Cpu).unwrap();
    let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let (x, y) = (ga.get(v.as_tensor()).expect("fused grad"), gb.get(v.as_tensor()).expect("reference grad"));
        let d = max_abs_diff(x, y);
        let scale = y.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert!(d < tol * scale, "gradient of input {i} differs by {d} (scale {scale})");
    }
}
