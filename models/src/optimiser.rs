//! AdamW over the trainable parameters of a [`VarMap`]: everything except the BatchNorm running
//! statistics and the parameters of frozen layers.
//!
//! [`FusedAdamW`] performs candle-nn's `AdamW` update in one in-place pass per parameter:
//! candle-nn's runs about a dozen tensor operations per parameter, each reading and allocating
//! a parameter-sized tensor.

use crate::layers::is_buffer;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use multiversion::multiversion;
use rayon::prelude::*;
use std::sync::Mutex;

/// The variables AdamW updates when the `frozen` layers (stage names of the architecture,
/// `Network::frozen_layers`) are frozen, sorted by name.
pub fn trainable_vars(varmap: &VarMap, frozen: &[&str]) -> Vec<(String, Var)> {
    let frozen_prefixes: Vec<String> = frozen.iter().map(|l| format!("{l}.")).collect();
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .filter(|(name, _)| !frozen_prefixes.iter().any(|p| name.starts_with(p.as_str())))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// AdamW with decoupled weight decay (the guide's optimiser, lr 1e-3).
pub fn adamw(varmap: &VarMap, frozen: &[&str], lr: f64, weight_decay: f64) -> Result<FusedAdamW> {
    let vars = trainable_vars(varmap, frozen)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    FusedAdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay,
            ..Default::default()
        },
    )
}

/// AdamW (Loshchilov & Hutter) with the same update as candle-nn's `AdamW`, fused into one pass
/// over each f32 parameter, its gradient and its two moment buffers, updating in place.
#[derive(Debug)]
pub struct FusedAdamW {
    vars: Vec<(Var, Mutex<Moments>)>,
    step_t: i32,
    params: ParamsAdamW,
}

/// First and second moment estimates of one parameter.
#[derive(Debug)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Optimizer for FusedAdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars = vars
            .into_iter()
            .map(|var| {
                if var.dtype() != candle_core::DType::F32 {
                    candle_core::bail!("AdamW: parameters must be f32, got {:?}", var.dtype());
                }
                let n = var.elem_count();
                let moments = Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                };
                Ok((var, Mutex::new(moments)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            step_t: 0,
            params,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let update = |moments| AdamWUpdate {
            moments,
            lr: p.lr as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(self.step_t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(self.step_t))) as f32,
            eps: p.eps as f32,
        };
        for (var, moments) in &self.vars {
            if let Some(grad) = grads.get(var) {
                var.as_tensor()
                    .inplace_op2(&grad.contiguous()?, &update(moments))?;
            }
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// One AdamW step on one parameter (the in-place op's operands: parameter, gradient).
struct AdamWUpdate<'a> {
    moments: &'a Mutex<Moments>,
    lr: f32,
    /// `1 − lr·weight_decay`.
    decay: f32,
    beta1: f32,
    beta2: f32,
    /// Bias corrections `1/(1 − βᵗ)`.
    scale_m: f32,
    scale_v: f32,
    eps: f32,
}

impl InplaceOp2 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let grad = crate::ops::contiguous_f32(self.name(), s2, l2)?;
        let (CpuStorage::F32(theta), Some((start, end))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("fused-adamw: the parameter must be a contiguous f32 tensor");
        };
        let theta = &mut theta[start..end];
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused-adamw: moments lock poisoned".into()))?;
        let Moments { m, v } = &mut *moments;
        if grad.len() != theta.len() || m.len() != theta.len() {
            candle_core::bail!("fused-adamw: gradient or moments do not match the parameter");
        }
        const CHUNK: usize = 1 << 14;
        theta
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((theta, grad), (m, v))| adamw_chunk(self, theta, grad, m, v));
        Ok(())
    }
}

/// The AdamW update of one chunk of a parameter and its moments.
#[multiversion(targets = "simd")]
fn adamw_chunk(u: &AdamWUpdate<'_>, theta: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((t, &g), m), v) in theta.iter_mut().zip(grad).zip(m).zip(v) {
        *m = u.beta1 * *m + (1.0 - u.beta1) * g;
        *v = u.beta2 * *v + (1.0 - u.beta2) * g * g;
        let step = (*m * u.scale_m) / ((*v * u.scale_v).sqrt() + u.eps);
        *t = *t * u.decay - u.lr * step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::max_abs_diff;
    use candle_core::{Device, Tensor};
    use candle_nn::AdamW;

    /// Three steps with changing gradients and learning rate give candle-nn's AdamW result.
    #[test]
    fn fused_adamw_matches_candle_nn_adamw() -> Result<()> {
        let dev = Device::Cpu;
        let init = [
            Tensor::randn(0f32, 1., (37, 5), &dev)?,
            Tensor::randn(0f32, 1., 40_000, &dev)?,
        ];
        let vars =
            |init: &[Tensor]| -> Result<Vec<Var>> { init.iter().map(Var::from_tensor).collect() };
        let (ours, theirs) = (vars(&init)?, vars(&init)?);
        let params = ParamsAdamW {
            lr: 1e-2,
            weight_decay: 1e-2,
            ..Default::default()
        };
        let mut fused = FusedAdamW::new(ours.clone(), params.clone())?;
        let mut reference = AdamW::new(theirs.clone(), params)?;
        for step in 0..3 {
            let probes = init
                .iter()
                .map(|t| Tensor::randn(0f32, 1., t.shape(), &dev))
                .collect::<Result<Vec<_>>>()?;
            let loss = |vars: &[Var]| -> Result<Tensor> {
                let mut total = Tensor::zeros((), candle_core::DType::F32, &dev)?;
                for (v, p) in vars.iter().zip(&probes) {
                    total = (total + (v.as_tensor().sqr()? * p)?.sum_all()?)?;
                }
                Ok(total)
            };
            fused.set_learning_rate(1e-2 / (step + 1) as f64);
            reference.set_learning_rate(1e-2 / (step + 1) as f64);
            fused.backward_step(&loss(&ours)?)?;
            reference.backward_step(&loss(&theirs)?)?;
        }
        for ((a, b), start) in ours.iter().zip(&theirs).zip(&init) {
            let d = max_abs_diff(a.as_tensor(), b.as_tensor());
            assert!(d < 1e-5, "parameters differ by {d}");
            assert!(
                max_abs_diff(a.as_tensor(), start) > 1e-3,
                "parameters did not move"
            );
        }
        Ok(())
    }
}
