//! The classification heads on the shared embedding, in the two kinds a model card can name.
//!
//! A `linear` head is torchvision's `fc` (weights and bias on the pooled feature), trained with
//! plain (label-smoothed) softmax. A `cosine` head has no bias: its logits are `scale · cos θ`
//! between the L2-normalised embedding and each L2-normalised class weight, which is what the
//! additive-margin losses (CosFace, ArcFace) train. Its class weights then live on the same
//! sphere as the catalogue's vectors, so a class weight is a character centroid and a score
//! means the same thing for a trained class and for a character enrolled later.

use crate::layers::l2_normalise;
use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which kind of head a network has (recorded in the model card).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum HeadKind {
    /// `W·x + b` on the pooled feature (torchvision's `fc`).
    #[default]
    Linear,
    /// `scale · cos(embedding, w_c)`, no bias.
    Cosine {
        /// Logit scale `s` (CosFace/ArcFace use ~30).
        scale: f64,
    },
}

/// One head: a linear layer or a scaled cosine classifier.
#[derive(Debug, Clone)]
pub enum Head {
    /// torchvision's `fc`.
    Linear(Linear),
    /// Class weights `(classes, dim)` compared by cosine, times `scale`.
    Cosine {
        /// `(classes, dim)`, not normalised (normalised on use, so it trains freely).
        weight: Tensor,
        /// Logit scale.
        scale: f64,
    },
}

impl Head {
    /// Creates (or loads through `vb`) a head of `kind` mapping `dim` features to `classes`.
    pub fn new(kind: HeadKind, dim: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            HeadKind::Linear => Self::Linear(candle_nn::linear(dim, classes, vb)?),
            HeadKind::Cosine { scale } => {
                let bound = 1.0 / (dim as f64).sqrt();
                let init = candle_nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                };
                Self::Cosine {
                    weight: vb.get_with_hints((classes, dim), "weight", init)?,
                    scale,
                }
            }
        })
    }

    /// Logits `(N, classes)` from the (in training, dropped-out) pooled feature `(N, dim)`;
    /// a cosine head normalises it first.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(linear) => linear.forward(pooled),
            Self::Cosine { weight, scale } => {
                let w = l2_normalise(weight)?;
                l2_normalise(pooled)?.matmul(&w.t()?)? * *scale
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn cosine_head_scores_are_scaled_cosines_and_have_no_bias() -> Result<()> {
        let mut vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let head = Head::new(HeadKind::Cosine { scale: 30.0 }, 2, 2, vb.pp("fc"))?;
        vm.set_one(
            "fc.weight",
            Tensor::new(&[[2f32, 0.], [0., 3.]], &Device::Cpu)?,
        )?;
        assert!(!vm.data().lock().unwrap().contains_key("fc.bias"));
        let e = Tensor::new(&[[1.2f32, 1.6]], &Device::Cpu)?;
        let logits = head.forward(&e)?.to_vec2::<f32>()?;
        assert!((logits[0][0] - 18.0).abs() < 1e-4 && (logits[0][1] - 24.0).abs() < 1e-4);
        Ok(())
    }
}
