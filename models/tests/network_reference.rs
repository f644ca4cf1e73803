//! The whole network against a plain-candle reference built from the same weights: candle's own
//! `conv2d`, BatchNorm and ReLU from elementary tensor ops, `(N, C, H, W)` layout. Logits must
//! agree (eval and train mode), and so must the gradients of one training step (by direction:
//! see the comment in the test).
//!
//! Max pooling uses the crate's own op in both (candle has no ceil-mode pool); it is tested
//! against an independent reference in its module.

use animelens_models::ops::{max_pool2d, PoolGeometry};
use animelens_models::{HeadSpec, Network, GOOGLENET};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

struct Reference {
    vars: HashMap<String, Var>,
    train: bool,
}

impl Reference {
    fn t(&self, name: &str) -> &Tensor {
        self.vars[name].as_tensor()
    }

    /// Conv (candle) → BatchNorm (elementary ops) → ReLU, NCHW.
    fn basic(&self, p: &str, x: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        let y = x.conv2d(self.t(&format!("{p}.conv.weight")), pad, stride, 1, 1)?;
        let c = y.dim(1)?;
        let shape = (1, c, 1, 1);
        let (mean, var) = if self.train {
            let mean = y.mean_keepdim((0, 2, 3))?;
            let var = y.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
            (mean, var)
        } else {
            (
                self.t(&format!("{p}.bn.running_mean")).reshape(shape)?,
                self.t(&format!("{p}.bn.running_var")).reshape(shape)?,
            )
        };
        let norm = y
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + 1e-3)?.sqrt()?)?;
        norm.broadcast_mul(&self.t(&format!("{p}.bn.weight")).reshape(shape)?)?
            .broadcast_add(&self.t(&format!("{p}.bn.bias")).reshape(shape)?)?
            .relu()
    }

    fn inception(&self, p: &str, x: &Tensor) -> Result<Tensor> {
        let b1 = self.basic(&format!("{p}.branch1"), x, 1, 0)?;
        let b2 = self.basic(
            &format!("{p}.branch2.1"),
            &self.basic(&format!("{p}.branch2.0"), x, 1, 0)?,
            1,
            1,
        )?;
        let b3 = self.basic(
            &format!("{p}.branch3.1"),
            &self.basic(&format!("{p}.branch3.0"), x, 1, 0)?,
            1,
            1,
        )?;
        let pooled = max_pool2d(
            x,
            PoolGeometry {
                kernel: 3,
                stride: 1,
                pad: 1,
                ceil: true,
            },
        )?;
        let b4 = self.basic(&format!("{p}.branch4.1"), &pooled, 1, 0)?;
        Tensor::cat(&[b1, b2, b3, b4], 1)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let pool = |x: &Tensor, k| {
            max_pool2d(
                x,
                PoolGeometry {
                    kernel: k,
                    stride: 2,
                    pad: 0,
                    ceil: true,
                },
            )
        };
        let x = pool(&self.basic("conv1", x, 2, 3)?, 3)?;
        let x = self.basic("conv3", &self.basic("conv2", &x, 1, 0)?, 1, 1)?;
        let mut x = pool(&x, 3)?;
        for name in ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"] {
            x = self.inception(&format!("inception{name}"), &x)?;
            x = match name {
                "3b" => pool(&x, 3)?,
                "4e" => pool(&x, 2)?,
                _ => x,
            };
        }
        let pooled = x.mean((2, 3))?;
        pooled
            .matmul(&self.t("fc.weight").t()?)?
            .broadcast_add(self.t("fc.bias"))
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn network_matches_a_plain_candle_reference() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let net = Network::new(
        &GOOGLENET,
        &[HeadSpec {
            level: "character".into(),
            classes: 5,
        }],
        Default::default(),
        0.0,
        vb,
    )?;
    let vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
    let x = Tensor::randn(0f32, 1., (4, 3, 64, 64), &dev)?;

    // Eval mode (running statistics at their initial values).
    let ours = net.forward_t(&x, false)?.logits.remove(0);
    let reference = Reference {
        vars: vars.clone(),
        train: false,
    }
    .logits(&x)?;
    let d = max_abs_diff(&ours, &reference);
    assert!(d < 1e-3, "eval logits differ by {d}");

    // Train mode: batch statistics, and the gradients of a loss through the whole network.
    let reference = Reference {
        vars: vars.clone(),
        train: true,
    }
    .logits(&x)?;
    let ours = net.forward_t(&x, true)?.logits.remove(0);
    let d = max_abs_diff(&ours, &reference);
    assert!(d < 1e-3, "train logits differ by {d}");
    let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
    let g_ours = (&ours * &probe)?.sum_all()?.backward()?;
    let g_ref = (&reference * &probe)?.sum_all()?.backward()?;
    for name in [
        "fc.weight",
        "inception5b.branch4.1.bn.bias",
        "inception4c.branch3.1.conv.weight",
        "inception3a.branch2.1.conv.weight",
        "conv3.bn.weight",
        "conv1.bn.weight",
        "conv1.conv.weight",
    ] {
        let (a, b) = (
            g_ours.get(&vars[name]).unwrap(),
            g_ref.get(&vars[name]).unwrap(),
        );
        // Element-wise agreement is not expected deep in the network: ReLU zeros tie inside
        // max-pool windows, and a 1e-7 difference in the forward pass can route a gradient to
        // another position. The gradients must still point the same way.
        let (a, b) = (a.flatten_all()?, b.flatten_all()?);
        let cosine = (&a * &b)?.sum_all()?.to_scalar::<f32>()?
            / (a.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?
                * b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
        eprintln!("{name}: gradient cosine {cosine}");
        assert!(
            cosine > 0.995,
            "{name}: gradient cosine similarity {cosine}"
        );
    }
    Ok(())
}
