//! Evaluation: top-k accuracy per head, per-class precision/recall, confusion matrix, and
//! same-character retrieval on the embeddings (leave-one-out recall@1 and mAP@10).

use crate::data::{BatchLoader, DecodedSet, LoaderConfig};
use crate::folded::FoldedNetwork;

use crate::preprocess::Preprocessing;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Network outputs for a whole decoded set, in set order.
#[derive(Debug, Clone, Default)]
pub struct SetOutputs {
    /// `logits[head][image][class]`.
    pub logits: Vec<Vec<Vec<f32>>>,
    /// L2-normalised embeddings, one per image.
    pub embeddings: Vec<Vec<f32>>,
    /// The tapped block's pooled activations, one per image (empty without a tap).
    pub blocks: Vec<Vec<f32>>,
}

/// Runs the serving network (BatchNorm folded; int8 if the checkpoint is) over `set` (no augmentation), `batch_size`
/// images at a time, pooling the block after `tap` Inception blocks too when asked (see
/// [`FoldedNetwork::forward_tapped`]).
pub fn run_set(
    net: &FoldedNetwork,
    set: &Arc<DecodedSet>,
    pre: &Preprocessing,
    batch_size: usize,
    tap: Option<usize>,
) -> Result<SetOutputs> {
    let cfg = LoaderConfig {
        batch_size,
        pre: pre.clone(),
        augment: None,
        balanced: false,
        mixup_alpha: None,
        seed: 0,
        shuffle: false,
        instances: None,
    };
    let mut out = SetOutputs::default();
    for batch in BatchLoader::start(set.clone(), cfg, 0) {
        let (o, blocks) = net.forward_tapped(&batch.images, tap)?;
        out.blocks.extend(blocks.unwrap_or_default());
        if out.logits.is_empty() {
            out.logits = vec![Vec::new(); o.logits.len()];
        }
        for (h, l) in o.logits.iter().enumerate() {
            out.logits[h].extend(l.to_vec2::<f32>()?);
        }
        out.embeddings.extend(o.embedding.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Indices of the `k` largest values, best first.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

/// Fraction of rows whose label is among the `k` highest logits.
pub fn top_k_accuracy(logits: &[Vec<f32>], labels: &[u32], k: usize) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let hits = logits
        .iter()
        .zip(labels)
        .filter(|(l, &y)| top_k(l, k).contains(&(y as usize)))
        .count();
    hits as f64 / labels.len() as f64
}

/// Mean cross-entropy (no smoothing) of logits against labels.
pub fn cross_entropy(logits: &[Vec<f32>], labels: &[u32]) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| {
            let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            lse - l[y as usize] as f64
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// Precision, recall and support of one class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassReport {
    /// Class name.
    pub label: String,
    /// Correct predictions of this class / predictions of this class.
    pub precision: f64,
    /// Correct predictions of this class / images of this class.
    pub recall: f64,
    /// Images of this class.
    pub support: usize,
}

/// Metrics of one head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadReport {
    /// Label level.
    pub level: String,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-5 accuracy.
    pub top5: f64,
    /// Per-class precision and recall.
    pub classes: Vec<ClassReport>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u32>>,
}

/// Builds the report of one head.
pub fn head_report(
    level: &str,
    names: &[String],
    logits: &[Vec<f32>],
    labels: &[u32],
) -> HeadReport {
    let n = names.len();
    let mut confusion = vec![vec![0u32; n]; n];
    for (l, &y) in logits.iter().zip(labels) {
        confusion[y as usize][top_k(l, 1)[0]] += 1;
    }
    let classes = (0..n)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: u32 = confusion.iter().map(|row| row[c]).sum();
            let support: u32 = confusion[c].iter().sum();
            ClassReport {
                label: names[c].clone(),
                precision: if predicted > 0 {
                    tp / predicted as f64
                } else {
                    0.0
                },
                recall: if support > 0 {
                    tp / support as f64
                } else {
                    0.0
                },
                support: support as usize,
            }
        })
        .collect();
    HeadReport {
        level: level.into(),
        top1: top_k_accuracy(logits, labels, 1),
        top5: top_k_accuracy(logits, labels, 5),
        classes,
        confusion,
    }
}

/// Same-label retrieval quality of embeddings, leave-one-out within the set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetrievalReport {
    /// Queries with at least one other image of their label.
    pub queries: usize,
    /// Fraction of queries whose nearest other image has the same label.
    pub recall_at_1: f64,
    /// Mean average precision over the 10 nearest other images.
    pub map_at_10: f64,
}

/// Leave-one-out retrieval: each image queries all others by cosine similarity.
pub fn retrieval(embeddings: &[Vec<f32>], labels: &[u32]) -> Result<RetrievalReport> {
    let n = embeddings.len();
    if n < 2 {
        return Ok(RetrievalReport {
            queries: 0,
            recall_at_1: 0.0,
            map_at_10: 0.0,
        });
    }
    let dim = embeddings[0].len();
    let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
    let m = Tensor::from_vec(flat, (n, dim), &Device::Cpu)?;
    let sims = m.matmul(&m.t()?)?.to_vec2::<f32>()?;
    let mut per_label = std::collections::HashMap::new();
    labels
        .iter()
        .for_each(|l| *per_label.entry(*l).or_insert(0usize) += 1);
    let (mut queries, mut hits, mut ap_sum) = (0usize, 0usize, 0f64);
    for (q, row) in sims.iter().enumerate() {
        let relevant = per_label[&labels[q]] - 1;
        if relevant == 0 {
            continue;
        }
        queries += 1;
        let mut masked = row.clone();
        masked[q] = f32::NEG_INFINITY;
        let ranked: Vec<usize> = top_k(&masked, 11)
            .into_iter()
            .filter(|&i| i != q)
            .take(10)
            .collect();
        hits += (labels[ranked[0]] == labels[q]) as usize;
        let (mut found, mut precision_sum) = (0usize, 0f64);
        for (rank, &i) in ranked.iter().enumerate() {
            if labels[i] == labels[q] {
                found += 1;
                precision_sum += found as f64 / (rank + 1) as f64;
            }
        }
        ap_sum += precision_sum / relevant.min(10) as f64;
    }
    let q = queries.max(1) as f64;
    Ok(RetrievalReport {
        queries,
        recall_at_1: hits as f64 / q,
        map_at_10: ap_sum / q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_confusion() {
        let logits = vec![vec![3., 1., 0.], vec![0., 1., 3.], vec![0., 2., 1.]];
        let labels = [0, 1, 1];
        assert!((top_k_accuracy(&logits, &labels, 1) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(top_k_accuracy(&logits, &labels, 2), 1.0);
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let r = head_report("character", &names, &logits, &labels);
        assert_eq!(r.confusion[1], vec![0, 1, 1]);
        assert_eq!(r.classes[1].recall, 0.5);
        assert_eq!(r.classes[1].precision, 1.0);
        assert_eq!(r.classes[2].precision, 0.0);
    }

    #[test]
    fn retrieval_on_separable_and_mixed_embeddings() -> Result<()> {
        let e = |x: f32, y: f32| vec![x, y];
        let clean = vec![e(1., 0.), e(0.99, 0.14), e(0., 1.), e(0.14, 0.99)];
        let r = retrieval(&clean, &[0, 0, 1, 1])?;
        assert_eq!((r.queries, r.recall_at_1, r.map_at_10), (4, 1.0, 1.0));
        let r = retrieval(&clean, &[0, 1, 0, 1])?;
        assert_eq!(r.recall_at_1, 0.0);
        // The one relevant item ranks 3rd, 2nd, 3rd, 2nd: AP 1/3, 1/2, 1/3, 1/2.
        assert!((r.map_at_10 - 5.0 / 12.0).abs() < 1e-9, "{r:?}");
        Ok(())
    }

    #[test]
    fn cross_entropy_of_confident_correct_logits_is_small() {
        assert!(cross_entropy(&[vec![10., 0.]], &[0]) < 1e-3);
        assert!((cross_entropy(&[vec![0., 0.]], &[1]) - 2f64.ln()).abs() < 1e-9);
    }
}
