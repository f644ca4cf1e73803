//! The training loop: AdamW with cosine warm restarts, label-smoothed (and mixup) cross-entropy
//! summed over the heads — plain softmax, or an additive margin (CosFace, ArcFace) on cosine
//! heads — plus, when unlabelled pictures are given, the instance term (InfoNCE over two strong
//! views of each); characters can be held out entirely; validation every epoch, best checkpoint
//! by validation top-1, early stopping on validation loss, resume, metrics as JSONL and PNG curves.

use crate::augment::AugmentConfig;
use crate::checkpoint::{
    self, CheckpointError, HeadCard, InitReport, LoadedModel, ModelCard, ARCHITECTURE,
};
use crate::data::{decode_all, BatchLoader, Dataset, DecodedSet, LoaderConfig, Sample, Split};
use crate::folded::FoldedNetwork;
use crate::head::HeadKind;
use crate::instance_views::ViewConfig;
use crate::loss::{mix_targets, smoothed_targets, soft_cross_entropy};
use crate::metric_loss::{info_nce, margin_logits, Margin};
use crate::metrics::{cross_entropy, run_set, top_k_accuracy};
use crate::ops::on_pool;
use crate::optimiser::adamw;
use crate::plots::{line_chart, Series};
use crate::preprocess::{ColorSpace, Preprocessing};
use crate::prune::{PruneMask, PruneRule};
use crate::schedule::CosineRestarts;
use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Hyper-parameters, defaults from the guide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Square input side (64..=224).
    pub input_size: usize,
    /// Images per optimiser step.
    pub batch_size: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Learning rate at the end of each cosine period.
    pub min_lr: f64,
    /// Decoupled weight decay (L2).
    pub weight_decay: f64,
    /// Cosine restart period in epochs.
    pub restart_epochs: usize,
    /// Label smoothing.
    pub label_smoothing: f32,
    /// Dropout before the heads.
    pub dropout: f32,
    /// Mixup α (`None`: off).
    pub mixup_alpha: Option<f32>,
    /// Class-balanced sampling of the primary level.
    pub balanced: bool,
    /// Early stopping patience in epochs without a lower validation loss.
    pub patience: usize,
    /// Number of leading layers frozen (transfer learning).
    pub freeze: usize,
    /// Random seed.
    pub seed: u64,
    /// Augmentation (`None`: off).
    pub augment: Option<AugmentConfig>,
    /// Colour space fed to the network.
    pub color: ColorSpace,
    /// Luma histogram equalisation.
    pub equalize: bool,
    /// Stop each epoch after this many batches (quick experiments and tests).
    pub max_batches: Option<usize>,
    /// Additive margin on cosine heads (`None`: plain softmax on linear heads).
    #[serde(default)]
    pub margin: Option<Margin>,
    /// Logit scale of the cosine heads.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// The instance term (`None`: off, or no unlabelled pictures).
    #[serde(default)]
    pub instance: Option<InstanceTerm>,
    /// Characters (primary labels) left out of training entirely, for the unseen-character protocol.
    #[serde(default)]
    pub held_out: Vec<String>,
    /// Magnitude pruning of the starting weights, kept through training (`None`: off).
    #[serde(default)]
    pub prune: Option<PruneRule>,
}

fn default_scale() -> f64 {
    30.0
}

/// The instance-level contrastive term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceTerm {
    /// Unlabelled pictures per batch (two views each, on top of the labelled batch).
    pub pairs: usize,
    /// Weight of the term in the total loss.
    pub weight: f64,
    /// InfoNCE temperature.
    pub temperature: f64,
    /// How the views are made.
    pub views: ViewConfig,
}

impl Default for InstanceTerm {
    fn default() -> Self {
        Self {
            pairs: 16,
            weight: 1.0,
            temperature: 0.1,
            views: ViewConfig::default(),
        }
    }
}

impl TrainConfig {
    /// The head kind these settings train.
    pub fn head_kind(&self) -> HeadKind {
        match self.margin {
            Some(_) => HeadKind::Cosine { scale: self.scale },
            None => HeadKind::Linear,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            input_size: 96,
            batch_size: 32,
            epochs: 30,
            lr: 1e-3,
            min_lr: 1e-5,
            weight_decay: 1e-3,
            restart_epochs: 10,
            label_smoothing: 0.1,
            dropout: 0.5,
            mixup_alpha: None,
            balanced: false,
            patience: 5,
            freeze: 0,
            seed: 42,
            augment: Some(AugmentConfig::default()),
            color: ColorSpace::Rgb,
            equalize: false,
            max_batches: None,
            margin: None,
            scale: default_scale(),
            instance: None,
            held_out: Vec::new(),
            prune: None,
        }
    }
}

/// Where training reads from and writes to.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Output folder: `best.*`, `last.*`, `metrics.jsonl`, `curves.png`.
    pub out_dir: PathBuf,
    /// Start from these weights (torchvision names; mismatched heads re-initialised).
    pub init: Option<PathBuf>,
    /// Continue a previous run from its checkpoint (weights and epoch counter).
    pub resume: Option<PathBuf>,
    /// Show progress bars.
    pub progress: bool,
    /// Unlabelled pictures for the instance term (used when `TrainConfig::instance` is set).
    pub unlabelled: Vec<PathBuf>,
}

/// Metrics of one epoch (one JSONL line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Mean training loss (all heads, plus the weighted instance term).
    pub train_loss: f64,
    /// Mean instance term (unweighted), when it is on.
    #[serde(default)]
    pub instance_loss: Option<f64>,
    /// Training throughput.
    pub train_img_s: f64,
    /// Validation cross-entropy of the primary head (no smoothing).
    pub val_loss: f64,
    /// Validation top-1 per head, primary first.
    pub val_top1: Vec<f64>,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
}

/// Outcome of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Epoch metrics in order.
    pub history: Vec<EpochMetrics>,
    /// Epoch of the best checkpoint.
    pub best_epoch: usize,
    /// Its primary-head validation top-1.
    pub best_val_top1: f64,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Path of the best checkpoint (`.safetensors`).
    pub best_checkpoint: PathBuf,
    /// Images that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
    /// What `--init` loaded.
    pub init: Option<InitReport>,
}

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Checkpoint I/O.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Tensor computation.
    #[error("training step failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Configuration problem.
    #[error("{0}")]
    Config(String),
    /// Writing metrics or plots.
    #[error("cannot write {path}: {message}. Check free disk space and permissions")]
    Output {
        /// File.
        path: PathBuf,
        /// Cause.
        message: String,
    },
}

fn card_for(dataset: &Dataset, cfg: &TrainConfig) -> ModelCard {
    ModelCard {
        architecture: ARCHITECTURE.into(),
        preprocessing: Preprocessing {
            input_size: cfg.input_size,
            color: cfg.color,
            equalize: cfg.equalize,
        },
        heads: dataset
            .levels
            .iter()
            .zip(&dataset.classes)
            .map(|(level, labels)| HeadCard {
                level: level.clone(),
                labels: labels.clone(),
            })
            .collect(),
        head: cfg.head_kind(),
        dropout: cfg.dropout,
        epochs_trained: 0,
        training: serde_json::to_value(cfg).expect("config serialises"),
        metrics: Default::default(),
        fingerprint: String::new(),
        similarity: None,
        palette: None,
        block: None,
        int8: None,
    }
}

fn validate_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    if !(64..=224).contains(&cfg.input_size) {
        return Err(TrainError::Config(format!(
            "input size {} is outside 64..=224; pick e.g. --input-size 96",
            cfg.input_size
        )));
    }
    if cfg.margin.is_some() && cfg.mixup_alpha.is_some() {
        return Err(TrainError::Config(
            "mixup and a margin loss do not combine (a mixed image has no single target to put a margin on); drop one".into(),
        ));
    }
    if cfg.batch_size < 2 {
        return Err(TrainError::Config(
            "batch size must be at least 2 (BatchNorm needs a batch)".into(),
        ));
    }
    Ok(())
}

fn decode_split(
    dataset: &Dataset,
    split: Split,
    cfg: &TrainConfig,
    progress: bool,
    unreadable: &mut Vec<(PathBuf, String)>,
) -> Arc<DecodedSet> {
    let (set, failures) = decode_all(&dataset.split(split), cfg.input_size, progress);
    for (path, reason) in &failures {
        tracing::warn!("skipping unreadable image {}: {reason}", path.display());
    }
    if !failures.is_empty() {
        tracing::warn!(
            "{} unreadable images skipped in the {split:?} split",
            failures.len()
        );
    }
    unreadable.extend(failures);
    Arc::new(set)
}

/// Decodes the unlabelled pictures of the instance term at 1.5× the input size (so that crops
/// keep detail), when the term is on.
fn decode_instances(
    cfg: &TrainConfig,
    opts: &TrainOptions,
    unreadable: &mut Vec<(PathBuf, String)>,
) -> Option<Arc<DecodedSet>> {
    cfg.instance.as_ref()?;
    if opts.unlabelled.is_empty() {
        tracing::warn!(
            "the instance term is on but no unlabelled pictures were given: it is skipped"
        );
        return None;
    }
    let samples: Vec<Sample> = opts
        .unlabelled
        .iter()
        .map(|path| Sample {
            path: path.clone(),
            labels: Vec::new(),
            split: Split::Train,
        })
        .collect();
    let (set, failures) = decode_all(&samples, cfg.input_size * 3 / 2, opts.progress);
    tracing::info!("instance term: {} unlabelled pictures", set.images.len());
    unreadable.extend(failures);
    Some(Arc::new(set))
}

/// Loss of one batch: label-smoothed (and mixed, or margin-shifted) cross-entropy summed over the
/// heads on the labelled rows, plus the weighted instance term on the view rows. Returns the
/// total and the unweighted instance term.
fn batch_loss(
    out: &crate::network::Output,
    batch: &crate::data::Batch,
    cfg: &TrainConfig,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let labelled = batch.indices.len();
    let mut total: Option<Tensor> = None;
    let (labels, mixup, smoothing) = (&batch.labels, &batch.mixup, cfg.label_smoothing);
    for (l, y) in out.logits.iter().zip(labels) {
        let l = &l.narrow(0, 0, labelled)?;
        let l = &match cfg.margin {
            Some(margin) => margin_logits(l, y, cfg.scale, margin)?,
            None => l.clone(),
        };
        let classes = l.dim(1)?;
        let mut targets = smoothed_targets(y, classes, smoothing, &Device::Cpu)?;
        if let Some((partner, lambda)) = mixup {
            let other: Vec<u32> = partner.iter().map(|&p| y[p]).collect();
            let other = smoothed_targets(&other, classes, smoothing, &Device::Cpu)?;
            targets = mix_targets(&targets, &other, *lambda)?;
        }
        let loss = soft_cross_entropy(l, &targets)?;
        total = Some(match total {
            Some(t) => (t + loss)?,
            None => loss,
        });
    }
    let total = total.ok_or_else(|| candle_core::Error::Msg("the model has no heads".into()))?;
    match (&cfg.instance, batch.pairs) {
        (Some(term), pairs) if pairs > 0 => {
            let nce = info_nce(&out.embedding, labelled, pairs, term.temperature)?;
            Ok(((total + (&nce * term.weight)?)?, Some(nce)))
        }
        _ => Ok((total, None)),
    }
}

fn append_jsonl(path: &Path, m: &EpochMetrics) -> Result<(), TrainError> {
    let out = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(m).expect("metrics serialise")
        )
    };
    out().map_err(|e| TrainError::Output {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Writes `curves.png` (losses) and `accuracy.png` (validation top-1 per head).
pub fn plot_history(
    out_dir: &Path,
    history: &[EpochMetrics],
    levels: &[String],
) -> Result<(), TrainError> {
    let pts =
        |f: &dyn Fn(&EpochMetrics) -> f64| history.iter().map(|m| (m.epoch as f64, f(m))).collect();
    let losses = [
        Series {
            name: "train loss (smoothed, all heads)",
            points: pts(&|m| m.train_loss),
        },
        Series {
            name: "val loss (primary head)",
            points: pts(&|m| m.val_loss),
        },
    ];
    let accs: Vec<Series> = levels
        .iter()
        .enumerate()
        .map(|(i, l)| Series {
            name: l,
            points: pts(&|m| m.val_top1.get(i).copied().unwrap_or(0.0)),
        })
        .collect();
    let err = |path: PathBuf| {
        move |e: crate::plots::PlotError| TrainError::Output {
            path,
            message: e.to_string(),
        }
    };
    let curves = out_dir.join("curves.png");
    line_chart(&curves, "loss per epoch", "epoch", &losses).map_err(err(curves.clone()))?;
    let acc = out_dir.join("accuracy.png");
    line_chart(&acc, "validation top-1 per head", "epoch", &accs).map_err(err(acc.clone()))
}

/// Trains a network on `dataset` and returns the run's report.
pub fn train(
    dataset: &Dataset,
    cfg: &TrainConfig,
    opts: &TrainOptions,
) -> Result<TrainReport, TrainError> {
    validate_config(cfg)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| TrainError::Output {
        path: opts.out_dir.clone(),
        message: e.to_string(),
    })?;
    let held_out;
    let dataset = if cfg.held_out.is_empty() {
        dataset
    } else {
        held_out = dataset
            .without_characters(&cfg.held_out)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        tracing::info!(
            "holding out {} characters ({}): {} images left",
            cfg.held_out.len(),
            cfg.held_out.join(", "),
            held_out.samples.len()
        );
        &held_out
    };
    let mut unreadable = Vec::new();
    let train_set = decode_split(dataset, Split::Train, cfg, opts.progress, &mut unreadable);
    let instances = decode_instances(cfg, opts, &mut unreadable);
    if train_set.images.len() < cfg.batch_size {
        return Err(TrainError::Config(format!(
            "only {} readable training images, fewer than one batch of {}; add data or lower --batch-size",
            train_set.images.len(),
            cfg.batch_size
        )));
    }
    let mut val_set = decode_split(dataset, Split::Val, cfg, opts.progress, &mut unreadable);
    if val_set.images.is_empty() {
        tracing::warn!(
            "no validation images: validating on the training images (accuracy will be optimistic)"
        );
        val_set = train_set.clone();
    }

    let mut card = card_for(dataset, cfg);
    let (
        LoadedModel {
            varmap,
            mut net,
            card: loaded_card,
        },
        init,
    ) = match &opts.resume {
        Some(path) => {
            let model = checkpoint::load(path)?;
            if model.card.heads != card.heads {
                return Err(TrainError::Config(format!(
                    "cannot resume from {}: its heads/labels differ from this dataset's. Use --init to start from its weights instead",
                    path.display()
                )));
            }
            (model, None)
        }
        None => {
            let mut model = checkpoint::build(&card)?;
            let init = match &opts.init {
                Some(file) => {
                    let report = checkpoint::load_matching(&mut model.varmap, file)?;
                    tracing::info!(
                        "initialised {} tensors from {} ({} heads re-initialised, {} missing, {} ignored)",
                        report.loaded,
                        file.display(),
                        report.reinitialised.len(),
                        report.missing.len(),
                        report.ignored
                    );
                    Some(report)
                }
                None => None,
            };
            (model, init)
        }
    };
    let start_epoch = loaded_card.epochs_trained;
    let prune = match cfg.prune {
        Some(rule) => {
            let mask = PruneMask::new(&varmap, rule)?;
            mask.apply(&varmap)?;
            let stats = mask.stats();
            tracing::info!(
                "pruning {rule:?}: {} of {} convolution and head weights zeroed ({:.1}% of all {} parameters), kept at zero through training",
                stats.pruned,
                stats.prunable,
                100.0 * stats.sparsity(),
                stats.parameters
            );
            Some(mask)
        }
        None => None,
    };
    net.set_frozen(cfg.freeze);
    let mut opt = adamw(&varmap, &net.frozen_layers(), cfg.lr, cfg.weight_decay)?;
    let loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        pre: card.preprocessing.clone(),
        augment: cfg.augment.clone(),
        balanced: cfg.balanced,
        mixup_alpha: cfg.mixup_alpha,
        seed: cfg.seed,
        shuffle: true,
        instances: cfg.instance.as_ref().map(|t| (t.pairs, t.views.clone())),
    };
    let per_epoch = {
        let full = train_set.images.len() / cfg.batch_size;
        cfg.max_batches.map_or(full, |m| m.min(full)).max(1)
    };
    let schedule = CosineRestarts {
        max_lr: cfg.lr,
        min_lr: cfg.min_lr,
        period_steps: cfg.restart_epochs.max(1) * per_epoch,
    };
    let levels = dataset.levels.clone();
    let metrics_path = opts.out_dir.join("metrics.jsonl");
    let best_path = opts.out_dir.join("best");
    let mut history: Vec<EpochMetrics> = Vec::new();
    let (mut best_top1, mut best_epoch, mut best_loss, mut since_best_loss) =
        (-1.0, 0, f64::MAX, 0);
    let mut stopped_early = false;
    let bar_style = ProgressStyle::with_template(
        "epoch {prefix} {bar:30} {pos}/{len} batches [{elapsed}<{eta}] {msg}",
    )
    .expect("static template");

    for epoch in start_epoch..cfg.epochs {
        let started = Instant::now();
        let bar = if opts.progress {
            ProgressBar::new(per_epoch as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(bar_style.clone());
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let (mut loss_sum, mut nce_sum, mut images, mut lr) = (0.0, None, 0usize, cfg.lr);
        let loader = BatchLoader::start_with_instances(
            train_set.clone(),
            instances.clone(),
            loader_cfg.clone(),
            epoch as u64,
        );
        for (step, batch) in loader.take(per_epoch).enumerate() {
            lr = schedule.lr(epoch * per_epoch + step);
            opt.set_learning_rate(lr);
            let (loss, nce) = on_pool(|| {
                let out = net.forward_t(&batch.images, true)?;
                let (loss, nce) = batch_loss(&out, &batch, cfg)?;
                opt.backward_step(&loss)?;
                if let Some(mask) = &prune {
                    mask.apply(&varmap)?;
                }
                Ok::<_, candle_core::Error>((loss, nce))
            })?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            if let Some(nce) = nce {
                *nce_sum.get_or_insert(0.0) += nce.to_scalar::<f32>()? as f64;
            }
            images += batch.indices.len() + 2 * batch.pairs;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.3} | {:.1} img/s",
                loss_sum / (step + 1) as f64,
                images as f64 / started.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        let train_img_s = images as f64 / started.elapsed().as_secs_f64();
        let outputs = run_set(
            &FoldedNetwork::new(&net)?,
            &val_set,
            &card.preprocessing,
            cfg.batch_size.max(32),
            None,
        )?;
        let labels_of = |h: usize| val_set.labels.iter().map(|l| l[h]).collect::<Vec<u32>>();
        let val_top1: Vec<f64> = (0..levels.len())
            .map(|h| top_k_accuracy(&outputs.logits[h], &labels_of(h), 1))
            .collect();
        let val_loss = cross_entropy(&outputs.logits[0], &labels_of(0));
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / per_epoch as f64,
            instance_loss: nce_sum.map(|s: f64| s / per_epoch as f64),
            train_img_s,
            val_loss,
            val_top1: val_top1.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "epoch {}/{}: train loss {:.4}{}, val loss {:.4}, val top-1 {:.4} ({:.1} img/s, {:.0} s)",
            m.epoch,
            cfg.epochs,
            m.train_loss,
            m.instance_loss.map_or(String::new(), |l| format!(" (instance term {l:.4})")),
            m.val_loss,
            val_top1[0],
            m.train_img_s,
            m.seconds
        );
        append_jsonl(&metrics_path, &m)?;
        history.push(m);
        card.epochs_trained = epoch + 1;
        card.metrics = [
            ("val_top1".to_string(), val_top1[0]),
            ("val_loss".to_string(), val_loss),
        ]
        .into_iter()
        .chain(
            prune
                .as_ref()
                .map(|m| ("sparsity".to_string(), m.stats().sparsity())),
        )
        .collect();
        if val_top1[0] > best_top1 {
            best_top1 = val_top1[0];
            best_epoch = epoch + 1;
            checkpoint::save(&varmap, &best_path, &card, DType::F32)?;
        }
        checkpoint::save(&varmap, &opts.out_dir.join("last"), &card, DType::F32)?;
        if val_loss < best_loss {
            best_loss = val_loss;
            since_best_loss = 0;
        } else {
            since_best_loss += 1;
            if since_best_loss >= cfg.patience {
                tracing::info!(
                    "early stopping: validation loss has not improved for {} epochs",
                    cfg.patience
                );
                stopped_early = true;
                break;
            }
        }
    }
    if !history.is_empty() {
        plot_history(&opts.out_dir, &history, &levels)?;
    }
    Ok(TrainReport {
        history,
        best_epoch,
        best_val_top1: best_top1.max(0.0),
        stopped_early,
        best_checkpoint: checkpoint::checkpoint_paths(&best_path).0,
        unreadable,
        init,
    })
}
