//! GoogLeNet (Inception v1), as torchvision defines it.
//!
//! Szegedy et al., "Going Deeper with Convolutions" (CVPR 2015). Layer names, channel numbers,
//! ceil-mode pools and the 3×3 convolution in the "5×5" branch follow torchvision exactly, so a
//! converted torchvision checkpoint loads by name. With one 1000-class head and no auxiliary
//! classifiers the network has 6,624,904 parameters.
//!
//! AnimeLens adds one linear head per label level on the shared 1024-d pooled feature: the
//! primary head is named `fc` (torchvision's name), further heads `fc_<level>`.

use crate::head::{Head, HeadKind};
use crate::layers::{l2_normalise, BasicConv2d, Inception, InceptionSpec};
use crate::ops::{max_pool2d, PoolGeometry};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Width of the pooled feature, the embedding dimension.
pub const EMBEDDING_DIM: usize = 1024;

/// The freezable layers, in forward order (`--freeze N` freezes the first N).
pub const LAYER_NAMES: [&str; 13] = [
    "conv1",
    "conv2",
    "conv3",
    "inception3a",
    "inception3b",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "inception5a",
    "inception5b",
    "fc",
];

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
            "fc".to_string()
        } else {
            format!("fc_{}", self.level)
        }
    }
}

/// What the network returns for a batch.
#[derive(Debug)]
pub struct Output {
    /// Logits per head, each `(N, classes)`, in head order.
    pub logits: Vec<Tensor>,
    /// The 1024-d pooled features, L2-normalised, `(N, 1024)`.
    pub embedding: Tensor,
}

const fn ceil_pool(kernel: usize) -> PoolGeometry {
    PoolGeometry {
        kernel,
        stride: 2,
        pad: 0,
        ceil: true,
    }
}

/// The 3×3 stride-2 ceil-mode pool after `conv1` and after `conv3`.
pub(crate) const STEM_POOL: PoolGeometry = ceil_pool(3);

/// The max pool GoogLeNet runs after the Inception block `name`, if any.
pub(crate) fn pool_after(name: &str) -> Option<PoolGeometry> {
    match name {
        "inception3b" => Some(ceil_pool(3)),
        "inception4e" => Some(ceil_pool(2)),
        _ => None,
    }
}

fn spec(
    c_in: usize,
    ch1x1: usize,
    ch3x3red: usize,
    ch3x3: usize,
    ch5x5red: usize,
    ch5x5: usize,
    pool_proj: usize,
) -> InceptionSpec {
    InceptionSpec {
        c_in,
        ch1x1,
        ch3x3red,
        ch3x3,
        ch5x5red,
        ch5x5,
        pool_proj,
    }
}

/// The network. `frozen` leading layers run in eval mode and pass no gradient back.
#[derive(Debug, Clone)]
pub struct GoogLeNet {
    stem: [BasicConv2d; 3],
    blocks: Vec<(String, Inception)>,
    heads: Vec<Head>,
    dropout: f32,
    frozen: usize,
}

impl GoogLeNet {
    /// Builds (or loads, depending on `vb`) the network with the given heads, all of `kind`.
    pub fn new(heads: &[HeadSpec], kind: HeadKind, dropout: f32, vb: VarBuilder) -> Result<Self> {
        let table = [
            ("inception3a", spec(192, 64, 96, 128, 16, 32, 32)),
            ("inception3b", spec(256, 128, 128, 192, 32, 96, 64)),
            ("inception4a", spec(480, 192, 96, 208, 16, 48, 64)),
            ("inception4b", spec(512, 160, 112, 224, 24, 64, 64)),
            ("inception4c", spec(512, 128, 128, 256, 24, 64, 64)),
            ("inception4d", spec(512, 112, 144, 288, 32, 64, 64)),
            ("inception4e", spec(528, 256, 160, 320, 32, 128, 128)),
            ("inception5a", spec(832, 256, 160, 320, 32, 128, 128)),
            ("inception5b", spec(832, 384, 192, 384, 48, 128, 128)),
        ];
        let blocks = table
            .iter()
            .map(|(name, s)| Ok((name.to_string(), Inception::new(*s, vb.pp(*name))?)))
            .collect::<Result<Vec<_>>>()?;
        let heads = heads
            .iter()
            .enumerate()
            .map(|(i, h)| Head::new(kind, EMBEDDING_DIM, h.classes, vb.pp(h.param_prefix(i))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem: [
                BasicConv2d::new(3, 64, 7, 2, 3, vb.pp("conv1"))?,
                BasicConv2d::new(64, 64, 1, 1, 0, vb.pp("conv2"))?,
                BasicConv2d::new(64, 192, 3, 1, 1, vb.pp("conv3"))?,
            ],
            blocks,
            heads,
            dropout,
            frozen: 0,
        })
    }

    /// The stem convolutions (`conv1`, `conv2`, `conv3`).
    pub(crate) fn stem(&self) -> &[BasicConv2d; 3] {
        &self.stem
    }

    /// The Inception blocks with their names, in forward order.
    pub(crate) fn blocks(&self) -> &[(String, Inception)] {
        &self.blocks
    }

    /// The heads, in head order.
    pub(crate) fn heads(&self) -> &[Head] {
        &self.heads
    }

    /// Freezes the first `n` layers of [`LAYER_NAMES`] (eval-mode BatchNorm, no gradient).
    pub fn set_frozen(&mut self, n: usize) {
        self.frozen = n.min(LAYER_NAMES.len() - 1);
    }

    /// Number of frozen leading layers.
    pub fn frozen(&self) -> usize {
        self.frozen
    }

    /// Pooled 1024-d features before normalisation, `(N, 1024)`.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut layer = 0;
        // Runs one layer in train mode unless frozen, and cuts the graph after the last frozen one.
        let mut step = |f: &dyn Fn(bool) -> Result<Tensor>| -> Result<Tensor> {
            let frozen = layer < self.frozen;
            layer += 1;
            let y = f(train && !frozen)?;
            Ok(if frozen { y.detach() } else { y })
        };
        // Channel-major inside: every convolution is then one matrix product over the batch.
        let x = x.permute((1, 0, 2, 3))?.contiguous()?;
        let x = step(&|t| self.stem[0].forward_t(&x, t))?;
        let x = max_pool2d(&x, STEM_POOL)?;
        let x = step(&|t| self.stem[1].forward_t(&x, t))?;
        let x = step(&|t| self.stem[2].forward_t(&x, t))?;
        let mut x = max_pool2d(&x, STEM_POOL)?;
        for (name, block) in &self.blocks {
            let input = x.clone();
            x = step(&|t| block.forward_t(&input, t))?;
            if let Some(pool) = pool_after(name) {
                x = max_pool2d(&x, pool)?;
            }
        }
        x.mean((2, 3))?.t()?.contiguous()
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
    use crate::layers::is_buffer;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(heads: &[HeadSpec]) -> (VarMap, GoogLeNet) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = GoogLeNet::new(heads, HeadKind::Linear, 0.5, vb).unwrap();
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
            assert_eq!(out.embedding.dims(), &[2, EMBEDDING_DIM]);
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
