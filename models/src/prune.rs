//! Magnitude pruning: the guide's "remove the weights with |w| < 0.01", or a target sparsity,
//! kept through fine-tuning.
//!
//! Only convolution and head weights are pruned (`*.conv.weight`, `fc*.weight`); BatchNorm
//! parameters, biases and running statistics are left alone. A [`PruneMask`] is computed once
//! from the starting weights; training applies it after every optimiser step, so a pruned
//! weight is zero at every step and in every checkpoint, whatever AdamW's momentum or weight
//! decay would do. Unstructured zeros do not make the dense CPU kernels faster: the gain is
//! in parameters (and compressed file size), not speed (BENCHMARKS.md measures both).

use crate::layers::is_buffer;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// Which weights to remove.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneRule {
    /// Every prunable weight with `|w| <` this value (the guide: 0.01).
    Threshold(f32),
    /// The smallest-magnitude fraction of all prunable weights (0..1), one global threshold.
    Sparsity(f32),
}

/// Whether the variable `name` is a weight pruning may zero.
pub fn is_prunable(name: &str) -> bool {
    !is_buffer(name)
        && (name.ends_with(".conv.weight") || (name.starts_with("fc") && name.ends_with(".weight")))
}

/// How many weights a mask removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    /// Weights set to zero.
    pub pruned: usize,
    /// Weights pruning could touch (convolution and head weights).
    pub prunable: usize,
    /// All parameters of the network (running statistics excluded).
    pub parameters: usize,
}

impl PruneStats {
    /// Pruned share of all parameters.
    pub fn sparsity(&self) -> f64 {
        self.pruned as f64 / self.parameters.max(1) as f64
    }
}

/// The kept-weight masks (1 kept, 0 pruned) of one network's prunable variables.
#[derive(Debug, Clone)]
pub struct PruneMask {
    masks: Vec<(String, Tensor)>,
    stats: PruneStats,
}

/// The magnitude below which a `sparsity` share of `magnitudes` lies.
fn sparsity_threshold(mut magnitudes: Vec<f32>, sparsity: f32) -> f32 {
    let cut = ((magnitudes.len() as f64) * f64::from(sparsity.clamp(0.0, 1.0))).round() as usize;
    if cut == 0 {
        return 0.0;
    }
    if cut >= magnitudes.len() {
        return f32::INFINITY;
    }
    let (_, nth, _) = magnitudes.select_nth_unstable_by(cut, f32::total_cmp);
    *nth
}

impl PruneMask {
    /// Computes the masks for the current weights of `varmap` under `rule`.
    pub fn new(varmap: &VarMap, rule: PruneRule) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut prunable: Vec<(&String, Tensor)> = data
            .iter()
            .filter(|(name, _)| is_prunable(name))
            .map(|(name, var)| Ok((name, var.as_tensor().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        prunable.sort_by(|a, b| a.0.cmp(b.0));
        let threshold = match rule {
            PruneRule::Threshold(t) => t,
            PruneRule::Sparsity(s) => {
                let mut all = Vec::new();
                for (_, w) in &prunable {
                    all.extend(w.abs()?.flatten_all()?.to_vec1::<f32>()?);
                }
                sparsity_threshold(all, s)
            }
        };
        let parameters = data
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, v)| v.elem_count())
            .sum();
        let mut stats = PruneStats {
            pruned: 0,
            prunable: 0,
            parameters,
        };
        let mut masks = Vec::with_capacity(prunable.len());
        for (name, w) in prunable {
            let keep = w.abs()?.ge(threshold)?.to_dtype(DType::F32)?;
            let kept = keep.sum_all()?.to_scalar::<f32>()? as usize;
            stats.prunable += w.elem_count();
            stats.pruned += w.elem_count() - kept;
            masks.push((name.clone(), keep));
        }
        Ok(Self { masks, stats })
    }

    /// What the mask removes.
    pub fn stats(&self) -> PruneStats {
        self.stats
    }

    /// Zeroes the pruned weights of `varmap` (the network the mask was computed for).
    pub fn apply(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        for (name, keep) in &self.masks {
            let Some(var) = data.get(name) else {
                candle_core::bail!("pruning mask names {name}, which the network lacks");
            };
            let w = var.as_tensor();
            var.set(&w.mul(&keep.to_dtype(w.dtype())?)?)?;
        }
        Ok(())
    }
}

/// Counts the zero weights among the prunable variables of `varmap` (what a checkpoint holds).
pub fn zero_weights(varmap: &VarMap) -> Result<PruneStats> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut stats = PruneStats {
        pruned: 0,
        prunable: 0,
        parameters: 0,
    };
    for (name, var) in data.iter().filter(|(name, _)| !is_buffer(name)) {
        stats.parameters += var.elem_count();
        if is_prunable(name) {
            let zeros = var.as_tensor().eq(0.0)?.to_dtype(DType::F32)?;
            stats.pruned += zeros.sum_all()?.to_scalar::<f32>()? as usize;
            stats.prunable += var.elem_count();
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn varmap() -> Result<VarMap> {
        let vm = VarMap::new();
        let dev = Device::Cpu;
        let mut data = vm.data().lock().unwrap();
        let var = |v: &[f32], shape: &[usize]| {
            candle_core::Var::from_tensor(&Tensor::from_slice(v, shape, &dev)?)
        };
        data.insert(
            "conv1.conv.weight".into(),
            var(&[0.005, -0.02, 0.3, -0.009, 0.0101, 0.5], &[1, 6, 1, 1])?,
        );
        data.insert("fc.weight".into(), var(&[0.001, -0.2], &[1, 2])?);
        data.insert("fc.bias".into(), var(&[0.0001], &[1])?);
        data.insert("conv1.bn.weight".into(), var(&[0.001], &[1])?);
        data.insert("conv1.bn.running_mean".into(), var(&[0.0], &[1])?);
        drop(data);
        Ok(vm)
    }

    fn values(vm: &VarMap, name: &str) -> Vec<f32> {
        let data = vm.data().lock().unwrap();
        data[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn the_threshold_zeroes_small_conv_and_head_weights_only() -> Result<()> {
        let vm = varmap()?;
        let mask = PruneMask::new(&vm, PruneRule::Threshold(0.01))?;
        assert_eq!(
            mask.stats(),
            PruneStats {
                pruned: 3,
                prunable: 8,
                parameters: 10
            }
        );
        mask.apply(&vm)?;
        assert_eq!(
            values(&vm, "conv1.conv.weight"),
            [0.0, -0.02, 0.3, 0.0, 0.0101, 0.5]
        );
        assert_eq!(values(&vm, "fc.weight"), [0.0, -0.2]);
        // Biases and BatchNorm are not pruned, however small.
        assert_eq!(values(&vm, "fc.bias"), [0.0001]);
        assert_eq!(values(&vm, "conv1.bn.weight"), [0.001]);
        assert_eq!(zero_weights(&vm)?.pruned, 3);
        Ok(())
    }

    #[test]
    fn a_target_sparsity_removes_that_share_of_the_smallest_weights() -> Result<()> {
        let vm = varmap()?;
        // Half of the eight prunable weights: 0.001, 0.005, -0.009, 0.0101.
        let mask = PruneMask::new(&vm, PruneRule::Sparsity(0.5))?;
        assert_eq!(mask.stats().pruned, 4);
        mask.apply(&vm)?;
        assert_eq!(
            values(&vm, "conv1.conv.weight"),
            [0.0, -0.02, 0.3, 0.0, 0.0, 0.5]
        );
        assert_eq!(
            PruneMask::new(&vm, PruneRule::Sparsity(0.0))?
                .stats()
                .pruned,
            0
        );
        assert_eq!(
            PruneMask::new(&vm, PruneRule::Sparsity(1.0))?
                .stats()
                .pruned,
            8
        );
        Ok(())
    }
}
