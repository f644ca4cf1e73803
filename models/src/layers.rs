//! The trainable building blocks the architecture tables are made of: BatchNorm that really
//! trains, torchvision's `BasicConv2d` (conv without bias + BatchNorm(eps 1e-3) + ReLU), and the
//! Inception block, built branch by branch from its [`InceptionSpec`].

use crate::architecture::{ConvSpec, InceptionSpec};
use crate::ops::{
    batch_norm_relu, channel_stats, conv2d, max_pool2d, Conv2dGeometry, PoolGeometry,
};
use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

/// Spatial batch normalisation followed by ReLU over channel-major `(C, N, H, W)`
/// activations, as one fused kernel.
///
/// Train mode normalises with the batch statistics and updates the running statistics
/// (momentum 0.1, unbiased variance, as PyTorch); eval mode uses the running statistics.
#[derive(Debug, Clone)]
pub struct BatchNormRelu {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNormRelu {
    /// Creates (or loads) `weight`, `bias`, `running_mean`, `running_var` under `vb`.
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let var = |name: &str, init: f64| -> Result<Var> {
            Var::from_tensor(&vb.get_with_hints(channels, name, Init::Const(init))?)
        };
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
            running_mean: var("running_mean", 0.)?,
            running_var: var("running_var", 1.)?,
            eps,
            momentum: 0.1,
        })
    }

    /// Normalises `x` and applies ReLU; `train` selects batch statistics (and updates the
    /// running ones).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train {
            let (_, n, h, w) = x.dims4()?;
            let stats = channel_stats(x)?;
            let (mean, var) = (stats.get(0)?, stats.get(1)?);
            self.update_running(&mean, &var, n * h * w)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            )
        };
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let params = Tensor::stack(&[&self.weight, &self.bias, &mean, &inv_std], 0)?;
        batch_norm_relu(x, &params)
    }

    /// The eval-mode normalisation as a per-channel affine map `y = scale·x + shift`
    /// (before the ReLU): `scale = γ/√(σ²+ε)`, `shift = β − scale·μ`.
    pub(crate) fn eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let scale = (self.running_var.as_tensor() + self.eps)?
            .sqrt()?
            .recip()?
            .mul(&self.weight)?;
        let shift = (&self.bias - scale.mul(self.running_mean.as_tensor())?)?;
        Ok((
            scale.to_dtype(DType::F32)?.to_vec1()?,
            shift.to_dtype(DType::F32)?.to_vec1()?,
        ))
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = self.momentum;
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        let rm = ((self.running_mean.as_tensor() * (1. - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1. - m))? + (var * (m * unbias))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)
    }
}

/// torchvision's `BasicConv2d`: convolution (no bias) → BatchNorm(eps 1e-3) → ReLU.
#[derive(Debug, Clone)]
pub struct BasicConv2d {
    weight: Tensor,
    geometry: Conv2dGeometry,
    bn: BatchNormRelu,
}

impl BasicConv2d {
    /// The convolution `spec` describes, with parameters named like torchvision's.
    pub fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let fan_in = (spec.c_in * spec.kernel * spec.kernel) as f64;
        let init = Init::Randn {
            mean: 0.,
            stdev: (2.0 / fan_in).sqrt(),
        };
        let weight = vb.pp("conv").get_with_hints(
            (spec.c_out, spec.c_in, spec.kernel, spec.kernel),
            "weight",
            init,
        )?;
        Ok(Self {
            weight,
            geometry: spec.geometry(),
            bn: BatchNormRelu::new(spec.c_out, 1e-3, vb.pp("bn"))?,
        })
    }

    /// The convolution weight `(O, C, k, k)`, its geometry and the BatchNorm that follows.
    pub(crate) fn parts(&self) -> (&Tensor, Conv2dGeometry, &BatchNormRelu) {
        (&self.weight, self.geometry, &self.bn)
    }

    /// Runs conv → BN → ReLU on channel-major `(C, N, H, W)` activations.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv2d(x, &self.weight, self.geometry)?;
        self.bn.forward_t(&y, train)
    }
}

/// One Inception branch: an optional max pool, then its convolutions in sequence.
#[derive(Debug, Clone)]
pub struct InceptionBranch {
    /// Max pool run on the block's input first, if any.
    pub(crate) pool: Option<PoolGeometry>,
    /// Convolutions in order.
    pub(crate) convs: Vec<BasicConv2d>,
}

/// The Inception block: parallel branches concatenated along channels.
#[derive(Debug, Clone)]
pub struct Inception {
    branches: Vec<InceptionBranch>,
}

impl Inception {
    /// Builds the block's branches as its spec lists them, with torchvision's names
    /// (`branch1`, `branch2.0`, `branch2.1`, ..., `branch4.1`).
    pub fn new(s: InceptionSpec, vb: VarBuilder) -> Result<Self> {
        let branches = s
            .branches()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let convs = b
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(j, c)| BasicConv2d::new(*c, vb.pp(b.conv_name(i + 1, j))))
                    .collect::<Result<Vec<_>>>()?;
                Ok(InceptionBranch {
                    pool: b.pool,
                    convs,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { branches })
    }

    /// The branches in concatenation order.
    pub(crate) fn branches(&self) -> &[InceptionBranch] {
        &self.branches
    }

    /// Runs the branches on `(C, N, H, W)` and concatenates them along channels.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let outputs = self
            .branches
            .iter()
            .map(|b| {
                let mut y = match b.pool {
                    Some(pool) => max_pool2d(x, pool)?,
                    None => x.clone(),
                };
                for conv in &b.convs {
                    y = conv.forward_t(&y, train)?;
                }
                Ok(y)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outputs, 0)
    }
}

/// Divides each row of `x` `(N, D)` by its L2 norm.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Returns true for the running statistics, which the optimiser must not touch.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}
