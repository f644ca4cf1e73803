//! The trainable network, built by walking an architecture table (`architecture`).
//!
//! Each stage of the table becomes a layer here (conv, max pool, Inception block, global average
//! pool), with torchvision's parameter names, so a converted torchvision checkpoint loads by name.
//! AnimeLens adds one head per label level on the shared pooled feature: the primary head is
//! named `fc` (torchvision's name), further heads `fc_<level>`.

use crate::architecture::{Architecture, Op, HEAD_PREFIX};
use crate::head::{Head, HeadKind};
use crate::layers::{l2_normalise, BasicConv2d, Inception};
use crate::ops::{max_pool2d, PoolGeometry};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// One classification head: a label level and its number of classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// Label level (e.g. `character`).
    pub level: String,
    /// Number of classes.
    pub classes: usize,
}

impl HeadSpec {
    /// Parameter prefix of head `index`: `fc` for the primary head, `fc_<level>` for the others.
    pub fn param_prefix(&self, index: usize) -> String {
        if index == 0 {
            HEAD_PREFIX.to_string()
        } else {
            format!("{HEAD_PREFIX}_{}", self.level)
        }
    }
}

/// What the network returns for a batch.
#[derive(Debug)]
pub struct Output {
    /// Logits per head, each `(N, classes)`, in head order.
    pub logits: Vec<Tensor>,
    /// The pooled features, L2-normalised, `(N, embedding_dim)`.
    pub embedding: Tensor,
}

/// One stage of the table with its parameters.
#[derive(Debug, Clone)]
pub(crate) enum Layer {
    /// Conv → BN → ReLU.
    Conv(BasicConv2d),
    /// Max pool.
    MaxPool(PoolGeometry),
    /// Inception block.
    Inception(Inception),
    /// Mean over the plane.
    GlobalAveragePool,
}

/// The network. `frozen` leading layers (stages with parameters) run in eval mode and pass no
/// gradient back.
#[derive(Debug, Clone)]
pub struct Network {
    architecture: &'static Architecture,
    layers: Vec<Layer>,
    heads: Vec<Head>,
    dropout: f32,
    frozen: usize,
}

impl Network {
    /// Builds (or loads, depending on `vb`) `architecture` with the given heads, all of `kind`.
    pub fn new(
        architecture: &'static Architecture,
        heads: &[HeadSpec],
        kind: HeadKind,
        dropout: f32,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = architecture
            .stages
            .iter()
            .map(|stage| {
                let vb = vb.pp(stage.name);
                Ok(match stage.op {
                    Op::Conv(spec) => Layer::Conv(BasicConv2d::new(spec, vb)?),
                    Op::MaxPool(pool) => Layer::MaxPool(pool),
                    Op::Inception(spec) => Layer::Inception(Inception::new(spec, vb)?),
                    Op::GlobalAveragePool => Layer::GlobalAveragePool,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let heads = heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let dim = architecture.embedding_dim;
                Head::new(kind, dim, h.classes, vb.pp(h.param_prefix(i)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            architecture,
            layers,
            heads,
            dropout,
            frozen: 0,
        })
    }

    /// The table this network was built from.
    pub fn architecture(&self) -> &'static Architecture {
        self.architecture
    }

    /// The layers, one per stage of the table.
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The heads, in head order.
    pub(crate) fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// Freezes the first `n` layers of [`Architecture::layer_names`] (eval-mode BatchNorm, no
    /// gradient); the heads are never frozen.
    pub fn set_frozen(&mut self, n: usize) {
        self.frozen = n.min(self.architecture.layer_names().len() - 1);
    }

    /// Number of frozen leading layers.
    pub fn frozen(&self) -> usize {
        self.frozen
    }

    /// The names of the frozen layers, whose parameters the optimiser leaves alone.
    pub fn frozen_layers(&self) -> Vec<&'static str> {
        let mut names = self.architecture.layer_names();
        names.truncate(self.frozen);
        names
    }

    /// Pooled features before normalisation, `(N, embedding_dim)`.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Channel-major inside: every convolution is then one matrix product over the batch.
        let mut x = x.permute((1, 0, 2, 3))?.contiguous()?;
        let mut trained = 0;
        for layer in &self.layers {
            // Runs a layer in train mode unless frozen, and cuts the graph after a frozen one.
            let frozen = trained < self.frozen;
            let t = train && !frozen;
            let y = match layer {
                Layer::Conv(conv) => conv.forward_t(&x, t)?,
                Layer::Inception(block) => block.forward_t(&x, t)?,
                Layer::MaxPool(pool) => {
                    x = max_pool2d(&x, *pool)?;
                    continue;
                }
                Layer::GlobalAveragePool => return x.mean((2, 3))?.t()?.contiguous(),
            };
            trained += 1;
            x = if frozen { y.detach() } else { y };
        }
        candle_core::bail!(
            "architecture {} has no global average pool at its end",
            self.architecture.name
        )
    }

    /// Runs the network on `(N, 3, S, S)` normalised images.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Output> {
        let pooled = self.features(x, train)?;
        let embedding = l2_normalise(&pooled)?;
        let dropped = if train && self.dropout > 0. {
            candle_nn::ops::dropout(&pooled, self.dropout)?
        } else {
            pooled
        };
        let logits = self
            .heads
            .iter()
            .map(|h| h.forward(&dropped))
            .collect::<Result<Vec<_>>>()?;
        Ok(Output { logits, embedding })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::GOOGLENET;
    use crate::layers::is_buffer;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(heads: &[HeadSpec]) -> (VarMap, Network) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Network::new(&GOOGLENET, heads, HeadKind::Linear, 0.5, vb).unwrap();
        (vm, net)
    }

    fn head(level: &str, classes: usize) -> HeadSpec {
        HeadSpec {
            level: level.into(),
            classes,
        }
    }

    #[test]
    fn has_torchvision_parameter_count_and_names() {
        let (vm, _) = build(&[head("character", 1000)]);
        let data = vm.data().lock().unwrap();
        let params: usize = data
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(params, 6_624_904);
        for name in [
            "conv1.conv.weight",
            "conv1.bn.running_var",
            "inception3a.branch1.conv.weight",
            "inception4e.branch2.1.bn.bias",
            "inception5b.branch4.1.conv.weight",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(data.contains_key(name), "missing {name}");
        }
    }

    #[test]
    fn outputs_have_expected_shapes_at_several_input_sizes() -> Result<()> {
        let (_, net) = build(&[head("character", 7), head("work", 3)]);
        for size in [64, 96] {
            let x = Tensor::randn(0f32, 1., (2, 3, size, size), &Device::Cpu)?;
            let out = net.forward_t(&x, false)?;
            assert_eq!(out.logits[0].dims(), &[2, 7]);
            assert_eq!(out.logits[1].dims(), &[2, 3]);
            assert_eq!(out.embedding.dims(), &[2, GOOGLENET.embedding_dim]);
            let norms = out.embedding.sqr()?.sum(1)?.to_vec1::<f32>()?;
            assert!(norms.iter().all(|n| (n - 1.).abs() < 1e-4));
        }
        Ok(())
    }

    #[test]
    fn batchnorm_uses_batch_statistics_in_train_and_running_statistics_in_eval() -> Result<()> {
        let (vm, net) = build(&[head("character", 4)]);
        let running = |vm: &VarMap| {
            let data = vm.data().lock().unwrap();
            data["conv1.bn.running_mean"]
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap()
        };
        let x = (Tensor::randn(0f32, 1., (4, 3, 64, 64), &Device::Cpu)? + 0.5)?;
        let before = running(&vm);
        let eval1 = net.forward_t(&x, false)?.embedding;
        assert_eq!(
            before,
            running(&vm),
            "eval mode must not touch running statistics"
        );
        net.forward_t(&x, true)?;
        let after = running(&vm);
        assert_ne!(before, after, "train mode must update running statistics");
        // Eval output depends on the running statistics, which just changed.
        let eval2 = net.forward_t(&x, false)?.embedding;
        let d = (eval1 - &eval2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d > 0.0);
        // In train mode the first BN output has zero mean per channel (batch statistics).
        let eval3 = net.forward_t(&x, false)?.embedding;
        assert_eq!(eval2.to_vec2::<f32>()?, eval3.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn frozen_layers_get_no_gradient() -> Result<()> {
        let (vm, mut net) = build(&[head("character", 3)]);
        net.set_frozen(4);
        let x = Tensor::randn(0f32, 1., (2, 3, 64, 64), &Device::Cpu)?;
        let loss = net.forward_t(&x, true)?.logits[0].sum_all()?;
        let grads = loss.backward()?;
        let data = vm.data().lock().unwrap();
        assert!(grads.get(&data["conv1.conv.weight"]).is_none());
        assert!(grads
            .get(&data["inception3a.branch1.conv.weight"])
            .is_none());
        assert!(grads
            .get(&data["inception3b.branch1.conv.weight"])
            .is_some());
        assert!(grads.get(&data["fc.weight"]).is_some());
        Ok(())
    }
}
