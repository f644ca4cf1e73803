//! Decoding a split into memory once, then serving shuffled (or class-balanced) batches with
//! augmentation and mixup prepared on worker threads ahead of the training step. A batch can
//! also carry two strong views each of a few unlabelled pictures for the instance term, drawn
//! from their own decoded set in a shuffled cycle.

use super::dataset::Sample;
use crate::augment::{augment, AugmentConfig};
use crate::instance_views::{instance_view, ViewConfig};
use crate::preprocess::{decode, resize_square, write_chw, Preprocessing, DEFAULT_MAX_PIXELS};
use candle_core::{Device, Tensor};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rand_distr::Beta;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// A split decoded and resized to the input size, kept in memory.
#[derive(Debug, Default)]
pub struct DecodedSet {
    /// Images, `input_size` square.
    pub images: Vec<RgbImage>,
    /// Class index per level, per image.
    pub labels: Vec<Vec<u32>>,
    /// Source file per image.
    pub paths: Vec<PathBuf>,
}

/// Decodes `samples` in parallel (progress bar when `progress`); unreadable files are returned
/// as `(path, reason)` and left out.
pub fn decode_all(
    samples: &[Sample],
    size: usize,
    progress: bool,
) -> (DecodedSet, Vec<(PathBuf, String)>) {
    let bar = if progress {
        ProgressBar::new(samples.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("decoding {bar:30} {pos}/{len} images [{elapsed}<{eta}]")
            .expect("static template"),
    );
    let results: Vec<Result<RgbImage, String>> = samples
        .par_iter()
        .map(|s| {
            let out = std::fs::read(&s.path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| decode(&bytes, DEFAULT_MAX_PIXELS).map_err(|e| e.to_string()))
                .map(|img| resize_square(&img, size));
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    let mut set = DecodedSet::default();
    let mut failures = Vec::new();
    for (s, r) in samples.iter().zip(results) {
        match r {
            Ok(img) => {
                set.images.push(img);
                set.labels.push(s.labels.clone());
                set.paths.push(s.path.clone());
            }
            Err(reason) => failures.push((s.path.clone(), reason)),
        }
    }
    (set, failures)
}

/// How batches are drawn and prepared.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Preprocessing (input size, colour space, equalisation).
    pub pre: Preprocessing,
    /// Augmentation; `None` for evaluation.
    pub augment: Option<AugmentConfig>,
    /// Draw with probability inversely proportional to the primary class size (oversampling
    /// the long tail) instead of a plain shuffle.
    pub balanced: bool,
    /// Mixup Beta(α, α) parameter; `None` disables mixup.
    pub mixup_alpha: Option<f32>,
    /// Seed; each epoch and each image derive their own stream from it.
    pub seed: u64,
    /// Shuffle (training) or keep the order (evaluation).
    pub shuffle: bool,
    /// Instance pictures per batch (two views each) and how their views are made.
    pub instances: Option<(usize, ViewConfig)>,
}

/// A prepared batch.
#[derive(Debug)]
pub struct Batch {
    /// `(N + 2·pairs, 3, S, S)` normalised images: the `N` labelled ones (already mixed when
    /// mixup is on), then the first views of `pairs` instance pictures, then their second views.
    pub images: Tensor,
    /// Instance pictures in the batch (rows `N .. N + 2·pairs` of `images`).
    pub pairs: usize,
    /// Class index per level, then per image: `labels[level][i]`.
    pub labels: Vec<Vec<u32>>,
    /// Mixup partner of each image and the mixing weight λ of the image itself.
    pub mixup: Option<(Vec<usize>, f64)>,
    /// Positions of the images in the decoded set.
    pub indices: Vec<usize>,
}

/// Serves the batches of one epoch from a background thread, two batches ahead.
pub struct BatchLoader {
    receiver: Receiver<Batch>,
    /// Number of batches this epoch will yield.
    pub len: usize,
}

impl Iterator for BatchLoader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.receiver.recv().ok()
    }
}

fn epoch_order(set: &DecodedSet, cfg: &LoaderConfig, rng: &mut StdRng) -> Vec<usize> {
    let n = set.images.len();
    if !cfg.shuffle {
        return (0..n).collect();
    }
    if cfg.balanced {
        let classes = set
            .labels
            .iter()
            .map(|l| l[0] as usize + 1)
            .max()
            .unwrap_or(0);
        let mut counts = vec![0usize; classes];
        set.labels.iter().for_each(|l| counts[l[0] as usize] += 1);
        let weights: Vec<f64> = set
            .labels
            .iter()
            .map(|l| 1.0 / counts[l[0] as usize] as f64)
            .collect();
        let dist = WeightedIndex::new(&weights).expect("non-empty set with positive weights");
        return (0..n).map(|_| dist.sample(rng)).collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

impl BatchLoader {
    /// Starts preparing the batches of `epoch`. Training drops the last incomplete batch
    /// (BatchNorm needs more than one image); evaluation keeps it.
    pub fn start(set: Arc<DecodedSet>, cfg: LoaderConfig, epoch: u64) -> Self {
        Self::start_with_instances(set, None, cfg, epoch)
    }

    /// As [`BatchLoader::start`], adding `cfg.instances` pictures of `instances` (two views
    /// each) to every batch, cycling through them in an order shuffled per epoch.
    pub fn start_with_instances(
        set: Arc<DecodedSet>,
        instances: Option<Arc<DecodedSet>>,
        cfg: LoaderConfig,
        epoch: u64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let order = epoch_order(&set, &cfg, &mut rng);
        let chunks: Vec<Vec<usize>> = order
            .chunks(cfg.batch_size.max(1))
            .filter(|c| !cfg.shuffle || c.len() == cfg.batch_size || order.len() < cfg.batch_size)
            .map(|c| c.to_vec())
            .collect();
        let len = chunks.len();
        let pairs = match (&instances, &cfg.instances) {
            (Some(set), Some((per_batch, _))) if !set.images.is_empty() => *per_batch,
            _ => 0,
        };
        let mut cycle: Vec<usize> = (0..instances.as_ref().map_or(0, |s| s.images.len())).collect();
        cycle.shuffle(&mut rng);
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || {
            for (b, indices) in chunks.into_iter().enumerate() {
                let batch_seed = rng_seed(cfg.seed, epoch, b as u64);
                let picked: Vec<usize> = (0..pairs)
                    .map(|k| cycle[(b * pairs + k) % cycle.len()])
                    .collect();
                let views = instances
                    .as_deref()
                    .zip(cfg.instances.as_ref())
                    .map(|(s, (_, v))| (s, v, picked));
                let batch = prepare(&set, &cfg, indices, views, batch_seed);
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        Self { receiver: rx, len }
    }
}

fn rng_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index
}

/// Instance pictures of one batch: their set, how views are made, and which pictures.
type Views<'a> = (&'a DecodedSet, &'a ViewConfig, Vec<usize>);

fn prepare(
    set: &DecodedSet,
    cfg: &LoaderConfig,
    indices: Vec<usize>,
    views: Option<Views>,
    seed: u64,
) -> Batch {
    let s = cfg.pre.input_size;
    let plane = 3 * s * s;
    let labelled = indices.len() * plane;
    let pairs = views.as_ref().map_or(0, |v| v.2.len());
    let mut data = vec![0f32; labelled + 2 * pairs * plane];
    if let Some((instances, view_cfg, picked)) = &views {
        data[labelled..]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(k, out)| {
                let img = &instances.images[picked[k % pairs]];
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (0xA5A5_0000 + k as u64).wrapping_mul(0x1000_0000_01B3),
                );
                write_chw(
                    &instance_view(img, s as u32, view_cfg, &mut rng),
                    &cfg.pre,
                    out,
                )
            });
    }
    data[..labelled]
        .par_chunks_mut(plane)
        .zip(indices.par_iter())
        .enumerate()
        .for_each(|(i, (out, &idx))| {
            let img = &set.images[idx];
            match &cfg.augment {
                Some(aug) => {
                    let mut rng =
                        StdRng::seed_from_u64(seed.wrapping_add(i as u64 * 0x1000_0000_01B3));
                    write_chw(&augment(img, aug, &mut rng), &cfg.pre, out)
                }
                None => write_chw(img, &cfg.pre, out),
            }
        });
    let mut rng = StdRng::seed_from_u64(seed);
    let mixup = cfg.mixup_alpha.filter(|a| *a > 0.0).map(|alpha| {
        let lambda = Beta::new(alpha as f64, alpha as f64)
            .expect("alpha > 0")
            .sample(&mut rng);
        let mut partner: Vec<usize> = (0..indices.len()).collect();
        partner.shuffle(&mut rng);
        let original = data.clone();
        for (i, &p) in partner.iter().enumerate() {
            let (a, b) = (
                &original[i * plane..(i + 1) * plane],
                &original[p * plane..(p + 1) * plane],
            );
            for ((o, x), y) in data[i * plane..(i + 1) * plane].iter_mut().zip(a).zip(b) {
                *o = (lambda as f32) * x + (1.0 - lambda as f32) * y;
            }
        }
        (partner, lambda)
    });
    let levels = set.labels.first().map_or(0, |l| l.len());
    let labels = (0..levels)
        .map(|l| indices.iter().map(|&i| set.labels[i][l]).collect())
        .collect();
    let images = Tensor::from_vec(data, (indices.len() + 2 * pairs, 3, s, s), &Device::Cpu)
        .expect("buffer sized to the shape");
    Batch {
        images,
        pairs,
        labels,
        mixup,
        indices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Arc<DecodedSet> {
        Arc::new(DecodedSet {
            images: (0..n)
                .map(|i| RgbImage::from_pixel(8, 8, image::Rgb([i as u8 * 10, 0, 0])))
                .collect(),
            labels: (0..n).map(|i| vec![(i % 3 == 0) as u32]).collect(),
            paths: (0..n).map(|i| PathBuf::from(format!("{i}.png"))).collect(),
        })
    }

    fn cfg() -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            pre: Preprocessing::new(8),
            augment: Some(AugmentConfig::default()),
            balanced: false,
            mixup_alpha: Some(0.4),
            seed: 3,
            shuffle: true,
            instances: None,
        }
    }

    #[test]
    fn batches_are_reproducible_under_a_seed() {
        let a: Vec<Vec<f32>> = BatchLoader::start(set(10), cfg(), 1)
            .map(|b| b.images.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let b: Vec<Vec<f32>> = BatchLoader::start(set(10), cfg(), 1)
            .map(|b| b.images.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(
            a.len(),
            2,
            "10 images in batches of 4 drop the last partial batch"
        );
        assert_eq!(a, b);
        let c = BatchLoader::start(set(10), cfg(), 2).next().unwrap();
        assert_ne!(
            a[0],
            c.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn balanced_sampling_evens_out_classes() {
        let mut cfg = cfg();
        cfg.balanced = true;
        cfg.batch_size = 1;
        let mut minority = 0;
        let mut total = 0;
        for epoch in 0..40 {
            for b in BatchLoader::start(set(10), cfg.clone(), epoch) {
                minority += (b.labels[0][0] == 1) as usize;
                total += 1;
            }
        }
        // Class 1 is 4 of 10 images; balanced sampling draws it about half the time.
        let share = minority as f64 / total as f64;
        assert!((0.4..0.6).contains(&share), "share {share}");
    }

    #[test]
    fn instance_pictures_come_as_two_different_views_of_the_same_picture() {
        // Picture k: red and green ramps along x and y (crops differ), a constant blue of 40·k (identity).
        let pictures = Arc::new(DecodedSet {
            images: (0..5)
                .map(|k| {
                    RgbImage::from_fn(64, 64, |x, y| {
                        image::Rgb([x as u8 * 4, y as u8 * 4, 40 * k])
                    })
                })
                .collect(),
            labels: vec![vec![]; 5],
            paths: (0..5).map(|i| PathBuf::from(format!("u{i}.png"))).collect(),
        });
        let views = ViewConfig {
            jitter_p: 0.0,
            grey_p: 0.0,
            blur_p: 0.0,
            jpeg_p: 0.0,
            ..ViewConfig::default()
        };
        let mut cfg = cfg();
        cfg.mixup_alpha = None;
        cfg.instances = Some((3, views));
        let batch = BatchLoader::start_with_instances(set(10), Some(pictures), cfg, 0)
            .next()
            .unwrap();
        assert_eq!(batch.pairs, 3);
        assert_eq!(batch.images.dims(), &[4 + 6, 3, 8, 8]);
        let rows: Vec<Vec<Vec<f32>>> = batch.images.flatten_from(2).unwrap().to_vec3().unwrap();
        let blue = |r: usize| rows[r][2][0];
        let ramps = |r: usize| [rows[r][0].clone(), rows[r][1].clone()];
        let mut identities = Vec::new();
        for k in 0..3 {
            let (a, b) = (4 + k, 4 + 3 + k);
            assert_eq!(blue(a), blue(b), "views {a} and {b} come from one picture");
            assert_ne!(
                ramps(a),
                ramps(b),
                "the two views of picture {k} must differ"
            );
            identities.push((blue(a) * 1000.0) as i64);
        }
        identities.dedup();
        assert_eq!(identities.len(), 3, "three different pictures");
    }

    #[test]
    fn evaluation_keeps_order_and_the_last_partial_batch() {
        let mut cfg = cfg();
        cfg.shuffle = false;
        cfg.augment = None;
        cfg.mixup_alpha = None;
        let indices: Vec<usize> = BatchLoader::start(set(10), cfg, 0)
            .flat_map(|b| b.indices)
            .collect();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
    }
}
