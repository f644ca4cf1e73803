//! Label-smoothed, mixup-aware cross-entropy on soft targets.

use candle_core::{DType, Device, Result, Tensor, D};

/// Builds soft targets `(N, classes)`: `(1 - smoothing)` on the true class plus
/// `smoothing / classes` everywhere (PyTorch's `label_smoothing`).
pub fn smoothed_targets(
    labels: &[u32],
    classes: usize,
    smoothing: f32,
    device: &Device,
) -> Result<Tensor> {
    let off = smoothing / classes as f32;
    let mut data = vec![off; labels.len() * classes];
    for (row, &label) in labels.iter().enumerate() {
        data[row * classes + label as usize] += 1.0 - smoothing;
    }
    Tensor::from_vec(data, (labels.len(), classes), device)
}

/// Mixup of two target sets: `lambda * a + (1 - lambda) * b`.
pub fn mix_targets(a: &Tensor, b: &Tensor, lambda: f64) -> Result<Tensor> {
    (a * lambda)? + (b * (1.0 - lambda))?
}

/// Mean over the batch of `-sum(target * log_softmax(logits))`.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    (log_probs * targets)?.sum(D::Minus1)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_smoothing_equals_candle_cross_entropy() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 2., (5, 4), &dev)?;
        let labels = [0u32, 3, 1, 2, 3];
        let targets = smoothed_targets(&labels, 4, 0.0, &dev)?;
        let ours = soft_cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
        let label_t = Tensor::new(&labels, &dev)?;
        let reference = candle_nn::loss::cross_entropy(&logits, &label_t)?.to_scalar::<f32>()?;
        assert!((ours - reference).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn smoothed_targets_sum_to_one() -> Result<()> {
        let t = smoothed_targets(&[1, 0], 10, 0.1, &Device::Cpu)?;
        let sums = t.sum(1)?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        assert!((t.to_vec2::<f32>()?[0][1] - 0.91).abs() < 1e-6);
        Ok(())
    }
}
