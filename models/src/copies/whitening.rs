//! Learned whitening of the copy descriptor (Mikolajczyk & Matas' "Lw", as Radenović et al. use it
//! for instance retrieval). Raw GeM descriptors of post-ReLU features all point roughly the same
//! way, so any two pictures score ~0.95 and a copy stands out by little. Whitening fixes that with
//! two projections learned from pictures the catalogue need not contain: first by the covariance of
//! the *differences* between pictures and their edited copies (directions edits move a descriptor
//! along are shrunk), then a rotation onto the principal directions of unrelated pictures, keeping
//! the strongest `dim`. Unrelated pictures then score near zero and copies near one.
//!
//! A model's whitening is stored beside its checkpoint as `NAME.copy.safetensors` (`mean`, `d`
//! values; `projection`, `dim × d` row-major); `animelens learn-copy-whitening` writes it.

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
    #[error("cannot learn a copy whitening: {0}")]
    Data(String),
    /// The file could not be read or written.
    #[error("copy whitening file {path}: {message}")]
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
    pub fn learn(
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

    /// Length of the descriptors it takes.
    pub fn input_dim(&self) -> usize {
        self.mean.len()
    }

    /// The whitened, L2-normalised descriptor of `x` (of length [`Whitening::input_dim`]).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = x.iter().zip(&self.mean).map(|(v, m)| v - m).collect();
        let mut out: Vec<f32> = self
            .projection
            .chunks_exact(self.mean.len())
            .map(|row| row.iter().zip(&centred).map(|(a, b)| a * b).sum())
            .collect();
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|v| *v /= norm);
        }
        out
    }

    /// Where a checkpoint's whitening lives: `NAME.copy.safetensors` beside `NAME.safetensors`.
    pub fn path_for(checkpoint: &Path) -> PathBuf {
        let name = checkpoint
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".safetensors")
                    .to_string()
            })
            .unwrap_or_default();
        checkpoint.with_file_name(format!("{name}.copy.safetensors"))
    }

    /// Writes the whitening to `path`.
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
        std::fs::write(path, encoded).map_err(|e| file_err(e.to_string()))
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
        let w = Whitening::learn(&pairs, &unrelated, 6).unwrap();
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
        let path = Whitening::path_for(&dir.path().join("best"));
        assert!(path.ends_with("best.copy.safetensors"));
        w.save(&path).unwrap();
        assert_eq!(Whitening::load(&path).unwrap(), w);
        std::fs::write(&path, b"junk").unwrap();
        assert!(Whitening::load(&path).is_err());
    }
}
