//! The building blocks GoogLeNet is made of: BatchNorm that really trains, torchvision's
//! `BasicConv2d` (conv without bias + BatchNorm(eps 1e-3) + ReLU), and the Inception block.

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
    /// A `kernel`×`kernel` convolution from `c_in` to `c_out` channels, named like torchvision.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fan_in = (c_in * kernel * kernel) as f64;
        let init = Init::Randn {
            mean: 0.,
            stdev: (2.0 / fan_in).sqrt(),
        };
        let weight = vb
            .pp("conv")
            .get_with_hints((c_out, c_in, kernel, kernel), "weight", init)?;
        Ok(Self {
            weight,
            geometry: Conv2dGeometry {
                kernel,
                stride,
                pad,
            },
            bn: BatchNormRelu::new(c_out, 1e-3, vb.pp("bn"))?,
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

/// Channel numbers of one Inception block, in torchvision's argument order.
#[derive(Debug, Clone, Copy)]
pub struct InceptionSpec {
    /// Input channels.
    pub c_in: usize,
    /// 1×1 branch.
    pub ch1x1: usize,
    /// 3×3 branch reduction.
    pub ch3x3red: usize,
    /// 3×3 branch output.
    pub ch3x3: usize,
    /// "5×5" branch reduction.
    pub ch5x5red: usize,
    /// "5×5" branch output (a 3×3 convolution in torchvision, kept for weight compatibility).
    pub ch5x5: usize,
    /// Pool branch projection.
    pub pool_proj: usize,
}

impl InceptionSpec {
    /// Output channels: the four branches concatenated.
    pub fn c_out(&self) -> usize {
        self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj
    }
}

/// The 3×3 stride-1 "same" max pool in front of an Inception block's fourth branch.
pub(crate) const BRANCH_POOL: PoolGeometry = PoolGeometry {
    kernel: 3,
    stride: 1,
    pad: 1,
    ceil: true,
};

/// The Inception block: four parallel branches concatenated along channels.
#[derive(Debug, Clone)]
pub struct Inception {
    branch1: BasicConv2d,
    branch2: [BasicConv2d; 2],
    branch3: [BasicConv2d; 2],
    branch4: BasicConv2d,
}

impl Inception {
    /// Builds the block with torchvision's names (`branch2.0`, `branch2.1`, `branch4.1`, ...).
    pub fn new(s: InceptionSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            branch1: BasicConv2d::new(s.c_in, s.ch1x1, 1, 1, 0, vb.pp("branch1"))?,
            branch2: [
                BasicConv2d::new(s.c_in, s.ch3x3red, 1, 1, 0, vb.pp("branch2.0"))?,
                BasicConv2d::new(s.ch3x3red, s.ch3x3, 3, 1, 1, vb.pp("branch2.1"))?,
            ],
            branch3: [
                BasicConv2d::new(s.c_in, s.ch5x5red, 1, 1, 0, vb.pp("branch3.0"))?,
                BasicConv2d::new(s.ch5x5red, s.ch5x5, 3, 1, 1, vb.pp("branch3.1"))?,
            ],
            branch4: BasicConv2d::new(s.c_in, s.pool_proj, 1, 1, 0, vb.pp("branch4.1"))?,
        })
    }

    /// The six convolutions in torchvision order: `branch1`, `branch2.0`, `branch2.1`,
    /// `branch3.0`, `branch3.1`, `branch4.1`.
    pub(crate) fn convs(&self) -> [&BasicConv2d; 6] {
        [
            &self.branch1,
            &self.branch2[0],
            &self.branch2[1],
            &self.branch3[0],
            &self.branch3[1],
            &self.branch4,
        ]
    }

    /// Runs the four branches on `(C, N, H, W)` and concatenates them along channels.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b1 = self.branch1.forward_t(x, train)?;
        let b2 = self.branch2[1].forward_t(&self.branch2[0].forward_t(x, train)?, train)?;
        let b3 = self.branch3[1].forward_t(&self.branch3[0].forward_t(x, train)?, train)?;

        let b4 = self
            .branch4
            .forward_t(&max_pool2d(x, BRANCH_POOL)?, train)?;
        Tensor::cat(&[b1, b2, b3, b4], 0)
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
