//! Per-character vector sums, the state behind characters' centroids: each storage keeps one
//! table (items labelled at the primary level and enrolment shots together) and updates it as
//! items are added, relabelled and removed, so that a centroid never needs a scan. The logic in
//! `characters.rs` only reads the normalised centroids through [`crate::Storage`].

use crate::vector::VectorSum;
use std::collections::HashMap;

/// Per-character vector sums (items and enrolment shots together).
#[derive(Debug, Default)]
pub(crate) struct CentroidTable {
    sums: HashMap<String, VectorSum>,
}

impl CentroidTable {
    pub(crate) fn add(&mut self, name: &str, v: &[f32]) {
        let dim = v.len();
        self.sums
            .entry(name.to_string())
            .or_insert_with(|| VectorSum::new(dim))
            .add(v);
    }

    pub(crate) fn subtract(&mut self, name: &str, v: &[f32]) {
        if let Some(sum) = self.sums.get_mut(name) {
            sum.subtract(v);
            if sum.count == 0 {
                self.sums.remove(name);
            }
        }
    }

    /// The sum of `vectors` (all of length `dim`).
    pub(crate) fn sum_of(dim: usize, vectors: &[Vec<f32>]) -> VectorSum {
        let mut sum = VectorSum::new(dim);
        vectors.iter().for_each(|v| sum.add(v));
        sum
    }

    pub(crate) fn merge(&mut self, name: &str, other: &VectorSum) {
        self.sums
            .entry(name.to_string())
            .or_insert_with(|| VectorSum::new(other.sum.len()))
            .merge(other);
    }

    /// Normalised centroids of every character.
    pub(crate) fn centroids(&self) -> Vec<(String, Vec<f32>)> {
        let mut out: Vec<_> = self
            .sums
            .iter()
            .filter_map(|(name, sum)| Some((name.clone(), sum.direction()?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
