//! Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017), stepped per batch.

/// Learning rate schedule: cosine from `max_lr` to `min_lr` over each period, then restart.
#[derive(Debug, Clone, Copy)]
pub struct CosineRestarts {
    /// Learning rate at the start of each period.
    pub max_lr: f64,
    /// Learning rate at the end of each period.
    pub min_lr: f64,
    /// Period length in optimiser steps.
    pub period_steps: usize,
}

impl CosineRestarts {
    /// Learning rate for global step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let period = self.period_steps.max(1);
        let t = (step % period) as f64 / period as f64;
        self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anneals_then_restarts() {
        let s = CosineRestarts {
            max_lr: 1e-3,
            min_lr: 0.0,
            period_steps: 100,
        };
        assert!((s.lr(0) - 1e-3).abs() < 1e-12);
        assert!((s.lr(50) - 5e-4).abs() < 1e-9);
        assert!(s.lr(99) < 1e-5);
        assert!((s.lr(100) - 1e-3).abs() < 1e-12);
    }
}
