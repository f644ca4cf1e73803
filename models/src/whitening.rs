//! Learned whitenings of descriptors whose raw cosines say little. Globally pooled post-ReLU
//! features (and colour histograms) all point roughly the same way, so any two pictures score
//! high and the directions that tell pictures apart are drowned by the few that every picture
//! shares. A whitening `x ↦ P·(x − mean)`, L2-normalised, learned from example pictures, fixes
//! that. Two learners serve the two questions the product asks:
//! - [`Whitening::learn_from_pairs`], for the copy descriptor ("is this the same picture?"):
//!   Mikolajczyk & Matas' "Lw", as Radenović et al. use it for instance retrieval. First the
//!   covariance of the *differences* between pictures and their edited copies (directions edits
//!   move a descriptor along are shrunk), then a rotation onto the principal directions of
//!   unrelated pictures, keeping the strongest `dim`. Unrelated pictures then score near zero and
//!   copies near one.
//! - [`Whitening::learn_principal`], for the character vector's generic parts ("is this the same
//!   character?", [`crate::fusion`]): PCA whitening of pictures of the catalogue's domain, with
//!   shrinkage. It needs no labels, so it can be learned from any pictures of the domain a
//!   catalogue serves (BENCHMARKS, "Whitening the generic parts").
//!
//! A whitening is stored beside its checkpoint as `NAME.KIND.safetensors` (`mean`, `d` values;
//! `projection`, `dim × d` row-major): `NAME.copy.safetensors` (`animelens learn-copy-whitening`),
//! `NAME.block-whitening.safetensors` and `NAME.palette-whitening.safetensors`
//! (`animelens learn-whitening`).

use crate::unit_vector::normalised;
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};

/// Relative floor on the eigenvalues of the edit covariance (keeps directions no edit moved
/// from being blown up).
const EIGEN_FLOOR: f64 = 1e-3;

/// A mean and a projection: `whiten(x) = P·(x − mean)`, then L2-normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// Subtracted first (`d` values).
    pub mean: Vec<f32>,
    /// `dim × d`, row-major.
    pub projection: Vec<f32>,
    /// Output dimension.
    pub dim: usize,
}

/// Why a whitening could not be learned, read or written.
#[derive(Debug, thiserror::Error)]
pub enum WhiteningError {
    /// Too few or inconsistent descriptors.
    #[error("cannot learn a whitening: {0}")]
    Data(String),
    /// The file could not be read or written.
    #[error("whitening file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Whitening {
    /// Learns a whitening from `pairs` (a picture's descriptor, an edited copy's) and `unrelated`
    /// descriptors of distinct pictures, keeping `dim` output dimensions.
    pub fn learn_from_pairs(
        pairs: &[(Vec<f32>, Vec<f32>)],
        unrelated: &[Vec<f32>],
        dim: usize,
    ) -> Result<Self, WhiteningError> {
        let d = unrelated.first().map_or(0, Vec::len);
        if d == 0 || unrelated.len() < dim || pairs.len() < dim.min(d) {
            return Err(WhiteningError::Data(format!(
                "{} pairs and {} unrelated descriptors of length {d} are too few for {dim} \
                 dimensions; give at least {dim} of each",
                pairs.len(),
                unrelated.len()
            )));
        }
        if dim == 0 || dim > d {
            return Err(WhiteningError::Data(format!(
                "output dimension {dim} must be between 1 and {d}"
            )));
        }
        let mean = mean_of(unrelated, d);
        // 1. The covariance of edit differences, and its inverse square root.
        let mut cs = DMatrix::<f64>::zeros(d, d);
        for (a, b) in pairs {
            let diff = DVector::from_iterator(d, a.iter().zip(b).map(|(x, y)| (x - y) as f64));
            cs.ger(1.0, &diff, &diff, 1.0);
        }
        cs /= pairs.len() as f64;
        let eig = SymmetricEigen::new(cs);
        let floor = eig.eigenvalues.max() * EIGEN_FLOOR;
        let inv_sqrt = DMatrix::from_diagonal(&eig.eigenvalues.map(|l| 1.0 / l.max(floor).sqrt()));
        let p1 = &inv_sqrt * eig.eigenvectors.transpose();
        // 2. The principal directions of unrelated pictures after step 1.
        let mut cd = DMatrix::<f64>::zeros(d, d);
        for x in unrelated {
            let centred =
                DVector::from_iterator(d, x.iter().zip(&mean).map(|(v, m)| *v as f64 - m));
            let y = &p1 * centred;
            cd.ger(1.0, &y, &y, 1.0);
        }
        cd /= unrelated.len() as f64;
        let eig = SymmetricEigen::new(cd);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let mut projection = Vec::with_capacity(dim * d);
        for &k in order.iter().take(dim) {
            let row = eig.eigenvectors.column(k).transpose() * &p1;
            projection.extend(row.iter().map(|&v| v as f32));
        }
        Ok(Self {
            mean: mean.iter().map(|&v| v as f32).collect(),
            projection,
            dim,
        })
    }

    /// Learns a PCA whitening of `samples` (descriptors of pictures of the domain; no labels),
    /// keeping every dimension: centred on their mean, rotated onto their principal directions,
    /// and each direction divided by `√(λ + shrinkage·λ̄)`, where λ̄ is the mean eigenvalue. The
    /// shrinkage keeps the weakest directions (noise, or too few samples to estimate them) from
    /// being blown up; larger values stay closer to the raw cosine.
    pub fn learn_principal(samples: &[Vec<f32>], shrinkage: f64) -> Result<Self, WhiteningError> {
        let d = samples.first().map_or(0, Vec::len);
        if d == 0 || samples.len() < 2 || samples.iter().any(|s| s.len() != d) {
            return Err(WhiteningError::Data(format!(
                "{} descriptors (of length {d}) are too few or of unequal lengths: give at least \
                 two pictures",
                samples.len()
            )));
        }
        if !(shrinkage > 0.0 && shrinkage.is_finite()) {
            return Err(WhiteningError::Data(format!(
                "the shrinkage must be a positive number, got {shrinkage}"
            )));
        }
        let mean = mean_of(samples, d);
        // The covariance of the centred samples, each rescaled to unit length first (so that a
        // few strongly activated pictures do not set the directions).
        let centred: Vec<DVector<f64>> = samples
            .iter()
            .map(|x| {
                let v = DVector::from_iterator(d, x.iter().zip(&mean).map(|(v, m)| *v as f64 - m));
                let norm = v.norm();
                if norm > 0.0 {
                    v / norm
                } else {
                    v
                }
            })
            .collect();
        let centre = centred.iter().fold(DVector::zeros(d), |a, v| a + v) / centred.len() as f64;
        let mut cov = DMatrix::<f64>::zeros(d, d);
        for v in &centred {
            let v = v - &centre;
            cov.ger(1.0, &v, &v, 1.0);
        }
        cov /= (centred.len() - 1) as f64;
        let eig = SymmetricEigen::new(cov);
        let floor = shrinkage * eig.eigenvalues.map(|l| l.max(0.0)).mean();
        if floor <= 0.0 {
            return Err(WhiteningError::Data(
                "the descriptors are all the same: give pictures that differ".into(),
            ));
        }
        let mut projection = Vec::with_capacity(d * d);
        for k in 0..d {
            let scale = 1.0 / (eig.eigenvalues[k].max(0.0) + floor).sqrt();
            projection.extend(
                eig.eigenvectors
                    .column(k)
                    .iter()
                    .map(|&v| (v * scale) as f32),
            );
        }
        Ok(Self {
            mean: mean.iter().map(|&v| v as f32).collect(),
            projection,
            dim: d,
        })
    }

    /// A short hash of the whitening's numbers, for fingerprints: it changes whenever a
    /// relearned whitening would change the vectors.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for v in self.mean.iter().chain(&self.projection) {
            hash.update(v.to_le_bytes());
        }
        hash.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Length of the descriptors it takes.
    pub fn input_dim(&self) -> usize {
        self.mean.len()
    }

    /// The whitened, L2-normalised descriptor of `x` (of length [`Whitening::input_dim`]).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = x.iter().zip(&self.mean).map(|(v, m)| v - m).collect();
        normalised(
            self.projection
                .chunks_exact(self.mean.len())
                .map(|row| row.iter().zip(&centred).map(|(a, b)| a * b).sum())
                .collect(),
        )
    }

    /// Where a checkpoint's whitening of `kind` lives: `NAME.KIND.safetensors` beside
    /// `NAME.safetensors` (`kind` is `copy`, `block-whitening` or `palette-whitening`).
    pub fn path_for(checkpoint: &Path, kind: &str) -> PathBuf {
        let name = checkpoint
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".safetensors")
                    .to_string()
            })
            .unwrap_or_default();
        checkpoint.with_file_name(format!("{name}.{kind}.safetensors"))
    }

    /// Writes the whitening to `path` (atomically: a killed process leaves the old file).
    pub fn save(&self, path: &Path) -> Result<(), WhiteningError> {
        let file_err = |message: String| WhiteningError::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (mean, projection) = (bytes(&self.mean), bytes(&self.projection));
        let d = self.mean.len();
        let views = [
            (
                "mean",
                TensorView::new(safetensors::Dtype::F32, vec![d], &mean),
            ),
            (
                "projection",
                TensorView::new(safetensors::Dtype::F32, vec![self.dim, d], &projection),
            ),
        ];
        let views: Vec<(&str, TensorView<'_>)> = views
            .into_iter()
            .map(|(n, v)| v.map(|v| (n, v)).map_err(|e| file_err(e.to_string())))
            .collect::<Result<_, _>>()?;
        let encoded = safetensors::serialize(views, None).map_err(|e| file_err(e.to_string()))?;
        crate::atomic_file::write_atomically(path, &encoded).map_err(|e| file_err(e.to_string()))
    }

    /// Reads a whitening written by [`Whitening::save`].
    pub fn load(path: &Path) -> Result<Self, WhiteningError> {
        let file_err = |message: String| WhiteningError::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| file_err(e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), WhiteningError> {
            let t = tensors
                .tensor(name)
                .map_err(|e| file_err(format!("{name}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(file_err(format!("{name} is not f32")));
            }
            let values = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), values))
        };
        let (mean_shape, mean) = read("mean")?;
        let (shape, projection) = read("projection")?;
        match (mean_shape.as_slice(), shape.as_slice()) {
            ([d], [dim, d2]) if d == d2 && *dim > 0 => Ok(Self {
                mean,
                projection,
                dim: *dim,
            }),
            _ => Err(file_err(format!(
                "shapes {mean_shape:?} and {shape:?} do not fit together"
            ))),
        }
    }
}

fn mean_of(xs: &[Vec<f32>], d: usize) -> Vec<f64> {
    let mut mean = vec![0f64; d];
    for x in xs {
        mean.iter_mut().zip(x).for_each(|(m, v)| *m += *v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= xs.len() as f64);
    mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Pictures share a large common component and differ along a few directions; edits move
    /// them along one nuisance direction. After whitening, copies stay close and unrelated
    /// pictures are far apart, which they were not before.
    #[test]
    fn copies_stay_close_and_unrelated_pictures_spread_out() {
        let d = 12;
        let mut rng = StdRng::seed_from_u64(4);
        let picture = |rng: &mut StdRng| -> Vec<f32> {
            (0..d)
                .map(|j| {
                    if j == 0 {
                        5.0
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect()
        };
        let edit = |x: &[f32], rng: &mut StdRng| -> Vec<f32> {
            let mut y = x.to_vec();
            y[1] += rng.random_range(-3.0..3.0);
            y
        };
        let unrelated: Vec<Vec<f32>> = (0..400).map(|_| picture(&mut rng)).collect();
        let pairs: Vec<(Vec<f32>, Vec<f32>)> = unrelated
            .iter()
            .map(|x| (x.clone(), edit(x, &mut rng)))
            .collect();
        let w = Whitening::learn_from_pairs(&pairs, &unrelated, 6).unwrap();
        let cos = |a: &[f32], b: &[f32]| {
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (n(a) * n(b))
        };
        let (a, b) = (picture(&mut rng), picture(&mut rng));
        let a_copy = edit(&a, &mut rng);
        assert!(cos(&a, &b) > 0.8, "raw descriptors are all alike");
        let (wa, wb, wc) = (w.apply(&a), w.apply(&b), w.apply(&a_copy));
        assert_eq!(wa.len(), 6);
        assert!(cos(&wa, &wc) > 0.9, "copy {}", cos(&wa, &wc));
        assert!(cos(&wa, &wb) < 0.6, "unrelated {}", cos(&wa, &wb));

        let dir = tempfile::tempdir().unwrap();
        let path = Whitening::path_for(&dir.path().join("best"), "copy");
        assert!(path.ends_with("best.copy.safetensors"));
        w.save(&path).unwrap();
        assert_eq!(Whitening::load(&path).unwrap(), w);
        std::fs::write(&path, b"junk").unwrap();
        assert!(Whitening::load(&path).is_err());
    }

    /// Samples sharing a large common component, with one direction of spread 10× the others:
    /// after a principal whitening with little shrinkage, every direction has unit variance (so
    /// the weak directions count as much as the strong one), and two unrelated samples no
    /// longer look alike.
    #[test]
    fn a_principal_whitening_equalises_the_spread_of_every_direction() {
        let d = 6;
        let mut rng = StdRng::seed_from_u64(9);
        let sample = |rng: &mut StdRng| -> Vec<f32> {
            (0..d)
                .map(|j| match j {
                    0 => 5.0,
                    1 => rng.random_range(-3.0..3.0),
                    _ => rng.random_range(-0.3..0.3),
                })
                .collect()
        };
        let samples: Vec<Vec<f32>> = (0..4000).map(|_| sample(&mut rng)).collect();
        let w = Whitening::learn_principal(&samples, 1e-6).unwrap();
        assert_eq!((w.input_dim(), w.dim), (d, d));
        // The covariance of P·(x − mean) over unit-length centred samples is the identity, but
        // for the constant direction (no spread at all), which stays at zero.
        let projected: Vec<Vec<f64>> = samples
            .iter()
            .map(|x| {
                let c: Vec<f64> = x.iter().zip(&w.mean).map(|(v, m)| (v - m) as f64).collect();
                let n = c.iter().map(|v| v * v).sum::<f64>().sqrt();
                w.projection
                    .chunks_exact(d)
                    .map(|row| row.iter().zip(&c).map(|(a, b)| *a as f64 * b / n).sum())
                    .collect()
            })
            .collect();
        let mut variances = Vec::new();
        for a in 0..d {
            for b in 0..d {
                let mean = |k: usize| projected.iter().map(|p| p[k]).sum::<f64>() / 4000.0;
                let cov = projected
                    .iter()
                    .map(|p| (p[a] - mean(a)) * (p[b] - mean(b)))
                    .sum::<f64>()
                    / 3999.0;
                if a == b {
                    variances.push(cov);
                } else {
                    assert!(cov.abs() < 0.02, "cov[{a}][{b}] = {cov}");
                }
            }
        }
        variances.sort_by(f64::total_cmp);
        assert!(variances[0] < 0.01, "{variances:?}");
        assert!(
            variances[1..].iter().all(|v| (v - 1.0).abs() < 0.02),
            "{variances:?}"
        );
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let (x, y) = (sample(&mut rng), sample(&mut rng));
        let raw = cos(&x, &y) / (cos(&x, &x) * cos(&y, &y)).sqrt();
        assert!(raw > 0.5, "raw samples are alike: {raw}");
        assert!(cos(&w.apply(&x), &w.apply(&y)).abs() < raw);
        assert_ne!(
            w.digest(),
            Whitening::learn_principal(&samples, 1.0).unwrap().digest()
        );

        assert!(Whitening::learn_principal(&samples[..1], 1.0).is_err());
        assert!(Whitening::learn_principal(&samples, 0.0).is_err());
        assert!(Whitening::learn_principal(&[vec![1.0; d], vec![1.0; d]], 1.0).is_err());
    }

    #[test]
    fn whitenings_of_each_kind_live_beside_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("best.safetensors");
        let path = Whitening::path_for(&checkpoint, "block-whitening");
        assert!(path.ends_with("best.block-whitening.safetensors"));
        let samples: Vec<Vec<f32>> = (0..20)
            .map(|i| vec![1.0, i as f32, (i * i % 7) as f32])
            .collect();
        let w = Whitening::learn_principal(&samples, 1.0).unwrap();
        w.save(&path).unwrap();
        assert_eq!(Whitening::load(&path).unwrap(), w);
    }
}
