//! Metric-learning objectives: additive-margin softmax on a cosine head (CosFace, ArcFace) and
//! the instance-level contrastive term (InfoNCE / NT-Xent over two augmented views of each image).
//!
//! A plain softmax only has to put each training class on its side of a hyperplane, so the pooled
//! features of unseen characters fall anywhere and every drawing scores ~0.95 against every other.
//! The margin losses require each image to be closer to its own class weight than to any other by
//! a margin on the sphere (Wang et al., CosFace, CVPR 2018; Deng et al., ArcFace, CVPR 2019). The
//! instance term (Chen et al., SimCLR, ICML 2020; Pizzi et al., SSCD, CVPR 2022) needs no labels:
//! two views of one picture must be each other's nearest neighbour among every other image of the
//! batch, which trains on unlabelled collections (4,995 one-portrait characters) as well.

use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Which additive margin the cosine head is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Margin {
    /// CosFace: target logit `s·(cos θ − m)`.
    CosFace {
        /// Margin `m` (typically 0.35).
        margin: f64,
    },
    /// ArcFace: target logit `s·cos(θ + m)`, falling back to `s·(cos θ − m·sin m)` past `π − m`.
    ArcFace {
        /// Angular margin `m` in radians (typically 0.5).
        margin: f64,
    },
}

fn one_hot(labels: &[u32], classes: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; labels.len() * classes];
    for (row, &label) in labels.iter().enumerate() {
        data[row * classes + label as usize] = 1.0;
    }
    Tensor::from_vec(data, (labels.len(), classes), device)
}

/// Applies `margin` to the target logits of a cosine head's output `logits = scale · cos θ`
/// `(N, classes)`; the result goes into (label-smoothed) cross-entropy.
pub fn margin_logits(
    logits: &Tensor,
    labels: &[u32],
    scale: f64,
    margin: Margin,
) -> Result<Tensor> {
    let (n, classes) = logits.dims2()?;
    if n != labels.len() {
        candle_core::bail!("{n} logit rows for {} labels", labels.len());
    }
    let mask = one_hot(labels, classes, logits.device())?;
    let shift = match margin {
        Margin::CosFace { margin } => (mask * (-scale * margin))?,
        Margin::ArcFace { margin } => {
            let index = Tensor::new(labels, logits.device())?.unsqueeze(1)?;
            let cos = (logits.gather(&index, 1)? / scale)?.clamp(-1.0 + 1e-6, 1.0 - 1e-6)?;
            let sin = (1.0 - cos.sqr()?)?.sqrt()?;
            let phi = ((&cos * margin.cos())? - (sin * margin.sin())?)?;
            // Past θ = π − m, cos(θ + m) stops decreasing: use the CosFace-like fallback there.
            let threshold = (std::f64::consts::PI - margin).cos();
            let fallback = (&cos - margin * margin.sin())?;
            let above = cos.ge(threshold)?;
            let target = above.where_cond(&phi, &fallback)?;
            let delta = ((target - cos)? * scale)?;
            mask.broadcast_mul(&delta)?
        }
    };
    logits.to_dtype(DType::F32)? + shift
}

/// InfoNCE over instance views. `embedding` `(N, D)` is L2-normalised; rows `first ..
/// first + pairs` are the first views and the next `pairs` rows the second views of the same
/// pictures. Every view must pick out its partner among all other `N − 1` rows of the batch (the
/// labelled images in it are negatives too) at temperature `temperature`. Mean over the `2·pairs`
/// views.
pub fn info_nce(
    embedding: &Tensor,
    first: usize,
    pairs: usize,
    temperature: f64,
) -> Result<Tensor> {
    let n = embedding.dim(0)?;
    if pairs == 0 || first + 2 * pairs > n {
        candle_core::bail!("{pairs} view pairs from row {first} do not fit a batch of {n}");
    }
    let views = embedding.narrow(0, first, 2 * pairs)?;
    let sims = (views.matmul(&embedding.t()?)? / temperature)?;
    // Each view's own row is excluded: a large negative number there (exp underflows to 0).
    let mut mask = vec![0f32; 2 * pairs * n];
    for k in 0..2 * pairs {
        mask[k * n + first + k] = -1e4;
    }
    let mask = Tensor::from_vec(mask, (2 * pairs, n), embedding.device())?;
    let log_p = candle_nn::ops::log_softmax(&(sims + mask)?, D::Minus1)?;
    let partners: Vec<u32> = (0..2 * pairs)
        .map(|k| (first + (k + pairs) % (2 * pairs)) as u32)
        .collect();
    let index = Tensor::new(partners.as_slice(), embedding.device())?.unsqueeze(1)?;
    log_p.gather(&index, 1)?.neg()?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::l2_normalise;
    use crate::loss::{smoothed_targets, soft_cross_entropy};
    use candle_core::Var;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn cosface_subtracts_s_times_m_from_the_target_logit_only() -> Result<()> {
        let logits = Tensor::new(&[[15f32, 3.0], [-6.0, 24.0]], &Device::Cpu)?;
        let out = margin_logits(&logits, &[0, 1], 30.0, Margin::CosFace { margin: 0.35 })?;
        assert_eq!(
            out.to_vec2::<f32>()?,
            vec![vec![4.5, 3.0], vec![-6.0, 13.5]]
        );
        Ok(())
    }

    #[test]
    fn arcface_adds_the_angle_margin_and_falls_back_past_pi_minus_m() -> Result<()> {
        // cos θ = 0.5 (θ = 60°), m = 0.5 rad: target cos(60° + 0.5 rad) = 0.5·cos 0.5 − sin 60°·sin 0.5.
        let m = 0.5f64;
        let logits = Tensor::new(&[[15f32, 6.0], [6.0, -29.7]], &Device::Cpu)?;
        let out = margin_logits(&logits, &[0, 1], 30.0, Margin::ArcFace { margin: m })?
            .to_vec2::<f32>()?;
        let expected = 30.0 * (0.5 * m.cos() - (0.75f64).sqrt() * m.sin());
        assert!((out[0][0] as f64 - expected).abs() < 1e-3, "{out:?}");
        assert_eq!(out[0][1], 6.0);
        // cos θ = −0.99 lies past π − m: fallback cos θ − m·sin m.
        let fallback = 30.0 * (-0.99 - m * m.sin());
        assert!((out[1][1] as f64 - fallback).abs() < 1e-3, "{out:?}");
        Ok(())
    }

    #[test]
    fn info_nce_equals_a_hand_computation() -> Result<()> {
        // Rows: one labelled image, then views (a1, b1) of picture a and (a2, b2) of picture b.
        let e = Tensor::new(
            &[[1f32, 0.], [0.6, 0.8], [0., 1.], [0.8, 0.6], [0.6, -0.8]],
            &Device::Cpu,
        )?;
        // Layout: row 0 labelled, views 1,2 first views, 3,4 second views: pairs (1,3), (2,4).
        let t = 0.5;
        let got = scalar(&info_nce(&e, 1, 2, t)?) as f64;
        let rows = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6], [0.6, -0.8]];
        let dot = |a: usize, b: usize| rows[a][0] * rows[b][0] + rows[a][1] * rows[b][1];
        let mut expected = 0.0;
        for (anchor, partner) in [(1, 3), (2, 4), (3, 1), (4, 2)] {
            let denom: f64 = (0..5)
                .filter(|&j| j != anchor)
                .map(|j| (dot(anchor, j) / t).exp())
                .sum();
            expected += -((dot(anchor, partner) / t).exp() / denom).ln();
        }
        expected /= 4.0;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        Ok(())
    }

    #[test]
    fn info_nce_gradient_pulls_views_together() -> Result<()> {
        let raw = Var::from_tensor(&Tensor::new(
            &[
                [1f32, 0.2, 0.],
                [0.1, 1., 0.3],
                [0.7, 0.7, 0.1],
                [0.2, 0.9, 0.8],
            ],
            &Device::Cpu,
        )?)?;
        let cos_pair = |t: &Tensor| -> f32 {
            let e = l2_normalise(t).unwrap().to_vec2::<f32>().unwrap();
            (0..3).map(|d| e[0][d] * e[2][d]).sum()
        };
        let before = cos_pair(raw.as_tensor());
        let loss = info_nce(&l2_normalise(raw.as_tensor())?, 0, 2, 0.2)?;
        let grad = loss.backward()?.get(raw.as_tensor()).unwrap().clone();
        raw.set(&(raw.as_tensor() - (grad * 0.05)?)?)?;
        let after_loss = scalar(&info_nce(&l2_normalise(raw.as_tensor())?, 0, 2, 0.2)?);
        assert!(after_loss < scalar(&loss));
        assert!(
            cos_pair(raw.as_tensor()) > before,
            "views 0 and 2 must move closer"
        );
        Ok(())
    }

    /// Two classes in 8-d whose features share a large common component (as a softmax
    /// network's pooled features do, every drawing at cosine ~0.95 to every other); a linear
    /// 8 → 4 embedding is trained with each loss from the same start. Returns the mean cosine
    /// of same-class pairs minus that of different-class pairs, on fresh points.
    fn cosine_gap_after_training(margin: Option<Margin>) -> f32 {
        use crate::head::{Head, HeadKind};
        use candle_nn::{Optimizer, VarBuilder, VarMap};
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dev = Device::Cpu;
        let points = |seed: u64, n: usize| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut data = Vec::new();
            let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
            for &y in &labels {
                for d in 0..8 {
                    let mean = match d {
                        0 => {
                            if y == 0 {
                                1.0
                            } else {
                                -1.0
                            }
                        }
                        1 => 4.0,
                        _ => 0.0,
                    };
                    data.push(mean + rng.random_range(-0.8f32..0.8));
                }
            }
            (Tensor::from_vec(data, (n, 8), &dev).unwrap(), labels)
        };
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let mut rng = StdRng::seed_from_u64(3);
        let init: Vec<f32> = (0..32).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        let embed = vb
            .get_with_hints((4, 8), "embed", candle_nn::Init::Const(0.0))
            .unwrap();
        let mut vm = vm;
        vm.set_one("embed", Tensor::from_vec(init, (4, 8), &dev).unwrap())
            .unwrap();
        let kind = match margin {
            Some(_) => HeadKind::Cosine { scale: 10.0 },
            None => HeadKind::Linear,
        };
        let head = Head::new(kind, 4, 2, vb.pp("fc")).unwrap();
        let start: Vec<f32> = (0..8).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        vm.set_one("fc.weight", Tensor::from_vec(start, (2, 4), &dev).unwrap())
            .unwrap();
        if margin.is_none() {
            vm.set_one("fc.bias", Tensor::zeros(2, DType::F32, &dev).unwrap())
                .unwrap();
        }
        let mut opt = candle_nn::AdamW::new(
            vm.all_vars(),
            candle_nn::ParamsAdamW {
                lr: 0.05,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let (x, y) = points(1, 64);
        for _ in 0..60 {
            let logits = head
                .forward(&x.matmul(&embed.t().unwrap()).unwrap())
                .unwrap();
            let logits = match margin {
                Some(m) => margin_logits(&logits, &y, 10.0, m).unwrap(),
                None => logits,
            };
            let loss =
                soft_cross_entropy(&logits, &smoothed_targets(&y, 2, 0.0, &dev).unwrap()).unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let (x, y) = points(2, 40);
        let e = l2_normalise(&x.matmul(&embed.t().unwrap()).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (mut same, mut diff) = (Vec::new(), Vec::new());
        for i in 0..e.len() {
            for j in i + 1..e.len() {
                let c: f32 = e[i].iter().zip(&e[j]).map(|(a, b)| a * b).sum();
                if y[i] == y[j] {
                    same.push(c)
                } else {
                    diff.push(c)
                }
            }
        }
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        mean(&same) - mean(&diff)
    }

    #[test]
    fn the_margin_loss_separates_two_classes_by_angle_better_than_softmax() {
        let softmax = cosine_gap_after_training(None);
        let cosface = cosine_gap_after_training(Some(Margin::CosFace { margin: 0.35 }));
        let arcface = cosine_gap_after_training(Some(Margin::ArcFace { margin: 0.5 }));
        eprintln!("cosine gap: softmax {softmax}, cosface {cosface}, arcface {arcface}");
        assert!(
            cosface > softmax + 0.05,
            "cosface gap {cosface} vs softmax {softmax}"
        );
        assert!(
            arcface > softmax + 0.05,
            "arcface gap {arcface} vs softmax {softmax}"
        );
    }

    #[test]
    fn margin_loss_gradient_pulls_the_embedding_toward_its_class_weight() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[[0.8f32, 0.6]], &Device::Cpu)?)?;
        let w = l2_normalise(&Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu)?)?;
        let cos = |x: &Tensor| l2_normalise(x).unwrap().matmul(&w.t().unwrap()).unwrap();
        let loss_of = |x: &Tensor| -> Result<Tensor> {
            let logits = margin_logits(
                &(cos(x) * 30.0)?,
                &[1],
                30.0,
                Margin::CosFace { margin: 0.35 },
            )?;
            soft_cross_entropy(&logits, &smoothed_targets(&[1], 2, 0.0, &Device::Cpu)?)
        };
        let loss = loss_of(x.as_tensor())?;
        let grad = loss.backward()?.get(x.as_tensor()).unwrap().clone();
        let before = cos(x.as_tensor()).to_vec2::<f32>()?[0][1];
        x.set(&(x.as_tensor() - (grad * 0.01)?)?)?;
        assert!(cos(x.as_tensor()).to_vec2::<f32>()?[0][1] > before);
        assert!(scalar(&loss_of(x.as_tensor())?) < scalar(&loss));
        Ok(())
    }
}
