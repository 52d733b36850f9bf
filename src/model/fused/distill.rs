//! Logit distillation's loss and gradient, written over the student's logits (docs/method.md §10).
//!
//! Per position, with student logits `z`, teacher logits `u`, temperature `T` and weight `A`:
//! `loss = A·T²·KL(p_t ‖ p_s) + (1 − A)·CE(z, target)`, `p_t = softmax(u/T)`, `p_s = softmax(z/T)`, and
//! `d loss / dz = A·T·(p_s − p_t) + (1 − A)·(softmax(z) − onehot)`. With `top_k` the teacher's
//! distribution is its `k` largest logits, renormalized (zero elsewhere); the student's stays the full
//! softmax, so the KL is still ≥ 0 and the gradient above still exact.

use serde::{Deserialize, Serialize};

use super::*;

/// The distillation objective's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillLoss {
    /// `A`: the KL term's weight; the LM loss gets `1 − A`.
    pub weight: f64,
    /// `T`: both distributions are taken at this temperature (the KL is scaled by `T²`, as Hinton et al.,
    /// so that its gradient keeps its size as `T` changes).
    pub temperature: f64,
    /// The teacher's `k` largest logits only, renormalized; `None`: the full vocabulary.
    pub top_k: Option<usize>,
}

impl DistillLoss {
    /// Minitron's default: the KL alone, at temperature 1, over the full vocabulary.
    pub const MINITRON: Self = Self { weight: 1.0, temperature: 1.0, top_k: None };

    /// Settings that define no loss are refused by name.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(format!("--distill-weight must lie in [0, 1], got {}", self.weight));
        }
        // The kernels divide by T in f32.
        if !(self.temperature > 0.0
            && (self.temperature as f32).is_normal()
            && (1.0 / self.temperature as f32).is_normal())
        {
            return Err(format!("--distill-temperature must be a positive f32-sized number, got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return Err("--distill-top-k must be at least 1".into());
        }
        Ok(())
    }
}

/// Per row of `student: [n, vocab]` (overwritten with `dy` times the gradient of the loss) against
/// `teacher: [n, vocab]` and `targets: [n]`: returns the rows' LM NLL and `KL(p_t ‖ p_s)` (nats, before
/// the `A·T²` factor).
pub fn distill_with_grad_in_place(
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    loss: DistillLoss,
    dy: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let op = DistillInPlace { loss, dy, out: std::sync::Mutex::new(vec![]) };
    student.inplace_op3(&teacher.contiguous()?, &targets.contiguous()?, &op)?;
    let out = op.out.into_inner().map_err(|_| candle_core::Error::Msg("distillation: poisoned lock".into()))?;
    Ok(out.into_iter().unzip())
}

struct DistillInPlace {
    loss: DistillLoss,
    dy: f32,
    out: std::sync::Mutex<Vec<(f32, f32)>>,
}

impl candle_core::InplaceOp3 for DistillInPlace {
    fn name(&self) -> &'static str {
        "distillation-in-place"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (u, t) = (f32s(s2, l2, self.name())?, u32s(s3, l3, self.name())?);
        let v = last_dim(l1);
        let z = f32s_mut(s1, l1, self.name())?;
        if z.len() != t.len() * v || u.len() != z.len() || last_dim(l2) != v {
            bail!("{}: student {:?}, teacher {:?}, {} targets", self.name(), l1.dims(), l2.dims(), t.len());
        }
        if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
            bail!("{}: target {bad} outside the vocabulary of {v}", self.name());
        }
        let row = Row::new(self.loss, v);
        let mut out = vec![(0f32, 0f32); t.len()];
        out.par_iter_mut().zip(z.par_chunks_mut(v).zip(u.par_chunks(v)).zip(t.par_iter())).for_each_init(
            || (vec![0f32; v], Vec::new()),
            |(teacher, student), (out, ((z, u), &t))| {
                *out = row.grad(z, u, t as usize, self.dy, teacher, student);
            },
        );
        *self.out.lock().map_err(|_| candle_core::Error::Msg("distillation: poisoned lock".into()))? = out;
        Ok(())
    }
}

/// One row's arithmetic, in f32.
struct Row {
    a: f32,
    t: f32,
    inv_t: f32,
    /// `k` of the top-k teacher (`vocab` for the full distribution).
    k: usize,
}

impl Row {
    fn new(loss: DistillLoss, vocab: usize) -> Self {
        let t = loss.temperature as f32;
        Self { a: loss.weight as f32, t, inv_t: 1.0 / t, k: loss.top_k.unwrap_or(vocab).min(vocab) }
    }

    /// `(nll, kl)` of the row; `z` becomes `dy · d loss / dz`. `scratch` holds `vocab` floats; `student`
    /// grows to `vocab` floats when the LM term needs the softmax at temperature 1 beside the one at `T`.
    fn grad(
        &self,
        z: &mut [f32],
        u: &[f32],
        target: usize,
        dy: f32,
        scratch: &mut [f32],
        student: &mut Vec<f32>,
    ) -> (f32, f32) {
        let (a, t, inv_t) = (self.a, self.t, self.inv_t);
        let logit = z[target];
        // The LM loss at temperature 1, before `z` is overwritten (`log_sum_exp` keeps no temporaries).
        let (max_z, lse_z1) = cross_entropy::log_sum_exp(z);
        let nll = max_z + lse_z1 - logit;
        // The teacher: unnormalized `e^((u − max)/T)` over its support, in `scratch` (full) or in place of
        // the top k's logits (their indices in `idx`).
        let max_u = max_lanes(u);
        let full = self.k == u.len();
        let mut idx: Vec<usize> = vec![];
        let (cross, sum_u) = if full {
            scratch.iter_mut().zip(u).for_each(|(p, &u)| *p = exp((u - max_u) * inv_t));
            let sum_u = sum_lanes(scratch);
            // Σ p_t·(u − z), unnormalized: vectorizable lanes, like the sums.
            let mut acc = [0f32; LANES];
            for (i, ((p, u), z)) in scratch.iter().zip(u).zip(z.iter()).enumerate() {
                acc[i % LANES] += p * (u - z);
            }
            (acc.iter().sum::<f32>(), sum_u)
        } else {
            idx = top_k_indices(u, self.k);
            let mut sum_u = 0f32;
            let mut cross = 0f32;
            for &j in &idx {
                let p = exp((u[j] - max_u) * inv_t);
                scratch[j] = p;
                sum_u += p;
                cross += p * (u[j] - z[j]);
            }
            (cross, sum_u)
        };
        // The student at temperature T (and at 1, when both are needed and differ).
        let p1 = if a < 1.0 && t != 1.0 {
            let scale = 1.0 / lse_z1.exp();
            student.resize(z.len(), 0.0);
            student.iter_mut().zip(z.iter()).for_each(|(p, &z)| *p = exp(z - max_z) * scale);
            Some(&student[..])
        } else {
            None
        };
        z.iter_mut().for_each(|z| *z = exp((*z - max_z) * inv_t));
        let sum_zt = sum_lanes(z);
        // KL = Σ p_t (log p_t − log p_s) = Σ p_t (u − z)/T − (max_u/T + ln Σ_u) + (max_z/T + ln Σ_z).
        let kl = cross / sum_u * inv_t - (max_u * inv_t + sum_u.ln()) + (max_z * inv_t + sum_zt.ln());
        // Gradient: A·T·(p_s − p_t) + (1 − A)·(softmax(z) − onehot); at T = 1 the two softmaxes coincide.
        let (c_ps, c_pt) = (dy * a * t / sum_zt, dy * a * t / sum_u);
        match p1 {
            None => {
                let c = c_ps + if t == 1.0 { dy * (1.0 - a) / sum_zt } else { 0.0 };
                z.iter_mut().for_each(|z| *z *= c);
            }
            Some(p1) => z.iter_mut().zip(p1).for_each(|(z, p1)| *z = c_ps * *z + dy * (1.0 - a) * p1),
        }
        if full {
            z.iter_mut().zip(scratch.iter()).for_each(|(z, p)| *z -= c_pt * p);
        } else {
            idx.iter().for_each(|&j| z[j] -= c_pt * scratch[j]);
        }
        z[target] -= dy * (1.0 - a);
        (nll, kl.max(0.0))
    }
}

/// Indices of the `k` largest values of `u` (ties: any of them).
fn top_k_indices(u: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..u.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&i, &j| u[j].total_cmp(&u[i]));
        idx.truncate(k);
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The composed reference: `A·T²·Σ p_t (log p_t − log_softmax(z/T)) + (1 − A)·CE`, by autograd.
    fn composed(z: &Var, u: &Tensor, t: &Tensor, loss: DistillLoss) -> (Tensor, Tensor, Tensor) {
        let temp = loss.temperature;
        let logp_s = candle_nn::ops::log_softmax(&(z.as_tensor() / temp).unwrap(), D::Minus1).unwrap();
        let logp_t = candle_nn::ops::log_softmax(&(u / temp).unwrap(), D::Minus1).unwrap();
        let kl = (logp_t.exp().unwrap() * (logp_t - &logp_s).unwrap()).unwrap().sum(1).unwrap();
        let logp = candle_nn::ops::log_softmax(z.as_tensor(), D::Minus1).unwrap();
        let nll = logp.gather(&t.unsqueeze(1).unwrap(), 1).unwrap().squeeze(1).unwrap().neg().unwrap();
        let total = ((&kl * (loss.weight * temp * temp)).unwrap() + (&nll * (1.0 - loss.weight)).unwrap()).unwrap();
        let grad = total.sum_all().unwrap().backward().unwrap().get(z.as_tensor()).unwrap().clone();
        (nll, kl, grad)
    }

    #[test]
    fn the_in_place_kernel_matches_the_composed_loss_and_its_autograd() {
        let dev = Device::Cpu;
        let z = Var::from_tensor(&Tensor::randn(0f32, 3.0, (5, 70), &dev).unwrap()).unwrap();
        let u = Tensor::randn(0f32, 3.0, (5, 70), &dev).unwrap();
        let t = Tensor::new(&[0u32, 69, 7, 7, 13], &dev).unwrap();
        for (weight, temperature) in [(1.0, 1.0), (1.0, 2.0), (0.5, 1.0), (0.3, 2.5), (0.0, 1.0)] {
            let loss = DistillLoss { weight, temperature, top_k: None };
            let (nll, kl, grad) = composed(&z, &u, &t, loss);
            let y = z.as_tensor().copy().unwrap();
            let (got_nll, got_kl) = distill_with_grad_in_place(&y, &u, &t, loss, 1.0).unwrap();
            let close = |a: &[f32], b: &Tensor, tol: f32| {
                let b: Vec<f32> = b.to_vec1().unwrap();
                a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= tol * (1.0 + b.abs()))
            };
            assert!(close(&got_nll, &nll, 1e-5), "A {weight} T {temperature}: nll {got_nll:?} vs {nll}");
            assert!(close(&got_kl, &kl, 1e-5), "A {weight} T {temperature}: kl {got_kl:?} vs {kl}");
            let diff = (&y - &grad).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "A {weight} T {temperature}: gradient off by {diff}");
        }
    }

    /// `tests/fixtures/distill/kl.json`: PyTorch's `kl_div` and `cross_entropy` on fixed logits, and
    /// autograd's gradient (`scripts/reference/make_distill_fixture.py`), at T = 1 and 2, with and without
    /// the LM term and the top-k teacher.
    #[test]
    fn loss_and_gradient_match_pytorch_kl_div() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/distill/kl.json");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        };
        let (rows, vocab) = (f["rows"].as_u64().unwrap() as usize, f["vocab"].as_u64().unwrap() as usize);
        let dev = Device::Cpu;
        let z = Tensor::from_vec(floats(&f["student"]), (rows, vocab), &dev).unwrap();
        let u = Tensor::from_vec(floats(&f["teacher"]), (rows, vocab), &dev).unwrap();
        let targets: Vec<u32> = f["targets"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let t = Tensor::new(targets.as_slice(), &dev).unwrap();
        let cases = f["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 5);
        for c in cases {
            let loss = DistillLoss {
                weight: c["weight"].as_f64().unwrap(),
                temperature: c["temperature"].as_f64().unwrap(),
                top_k: c["top_k"].as_u64().map(|k| k as usize),
            };
            let y = z.copy().unwrap();
            let (nll, kl) = distill_with_grad_in_place(&y, &u, &t, loss, 1.0).unwrap();
            let worst = |got: &[f32], want: &[f32]| {
                got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0f32, f32::max)
            };
            assert!(worst(&nll, &floats(&c["nll"])) < 1e-5, "{loss:?}: nll");
            assert!(worst(&kl, &floats(&c["kl"])) < 1e-5, "{loss:?}: kl {kl:?} vs {:?}", floats(&c["kl"]));
            let grad: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let g = worst(&grad, &floats(&c["grad"]));
            assert!(g < 1e-6, "{loss:?}: gradient off by {g}");
        }
    }

    #[test]
    fn a_teacher_equal_to_the_student_gives_zero_loss_and_zero_gradient() {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f32, 3.0, (4, 300), &dev).unwrap();
        let t = Tensor::new(&[1u32, 2, 3, 299], &dev).unwrap();
        for temperature in [1.0, 2.0] {
            let y = z.copy().unwrap();
            let (_, kl) =
                distill_with_grad_in_place(&y, &z, &t, DistillLoss { temperature, ..DistillLoss::MINITRON }, 1.0)
                    .unwrap();
            assert!(kl.iter().all(|&k| k == 0.0), "{kl:?}");
            let max = y.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(max, 0.0, "T {temperature}");
        }
    }

    #[test]
    fn settings_that_define_no_loss_are_refused_by_name() {
        let d = DistillLoss::MINITRON;
        assert!(d.validate().is_ok());
        for (bad, needle) in [
            (DistillLoss { weight: 1.5, ..d }, "--distill-weight must lie in [0, 1]"),
            (DistillLoss { weight: f64::NAN, ..d }, "--distill-weight"),
            (DistillLoss { temperature: 0.0, ..d }, "--distill-temperature"),
            (DistillLoss { temperature: 1e-40, ..d }, "--distill-temperature"),
            (DistillLoss { temperature: f64::INFINITY, ..d }, "--distill-temperature"),
            (DistillLoss { top_k: Some(0), ..d }, "--distill-top-k must be at least 1"),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn top_k_keeps_the_largest_teacher_logits() {
        let u = [0.5f32, 3.0, -1.0, 2.0, 2.5];
        let mut got = top_k_indices(&u, 3);
        got.sort();
        assert_eq!(got, [1, 3, 4]);
        assert_eq!(top_k_indices(&u, 9).len(), 5);
    }
}
