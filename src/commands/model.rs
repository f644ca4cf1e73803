//! `train`, `eval`, `classify`, `embed`: the model's life cycle on the command line.

use super::generalisation::{self, GeneralisationArgs, GeneralisationReport};
use animelens_models::data::{decode_all, unlabelled_images, Dataset, LabelColumn, Split};
use animelens_models::fusion::{BlockFusion, Fusion, DEFAULT_BLOCK};
use animelens_models::instance_views::ViewConfig;
use animelens_models::metric_loss::Margin;
use animelens_models::metrics::{head_report, retrieval, run_set, HeadReport, RetrievalReport};
use animelens_models::palette::PaletteFusion;
use animelens_models::plots::confusion_matrix;
use animelens_models::preprocess::ColorSpace;
use animelens_models::prune::{zero_weights, PruneMask, PruneRule};
use animelens_models::train::{train, InstanceTerm, TrainConfig, TrainOptions};
use animelens_models::{Classifier, Embedder};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where labelled images come from.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// A folder (`<label>/*.jpg`, optionally under `train/`, `val/`, `test/`) or a CSV manifest.
    #[arg(long)]
    pub data: PathBuf,
    /// Manifest column holding the image path (relative to the manifest's folder).
    #[arg(long, default_value = "path")]
    pub path_column: String,
    /// Manifest label columns as `level=column`, primary level first
    /// (e.g. `character=name,work=generation,style=game`).
    #[arg(long, value_delimiter = ',', default_value = "character=label")]
    pub labels: Vec<String>,
    /// Manifest column with train/val/test; without it each class is split 8:1:1.
    #[arg(long)]
    pub split_column: Option<String>,
}

impl DataArgs {
    /// Reads the dataset.
    pub fn load(&self) -> Result<Dataset> {
        self.load_from(&self.data)
    }

    /// Reads the dataset at `data` (a folder or a manifest) with these column settings.
    pub fn load_from(&self, data: &Path) -> Result<Dataset> {
        let is_csv = data
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let ds = if is_csv {
            let labels: Vec<LabelColumn> =
                self.labels.iter().map(|l| LabelColumn::parse(l)).collect();
            Dataset::from_manifest(
                data,
                &self.path_column,
                &labels,
                self.split_column.as_deref(),
            )?
        } else {
            Dataset::from_folders(data)?
        };
        let count = |s| ds.samples.iter().filter(|x| x.split == s).count();
        tracing::info!(
            "{}: {} images, levels {:?} ({} classes at '{}'); train {}, val {}, test {}",
            data.display(),
            ds.samples.len(),
            ds.levels,
            ds.classes[0].len(),
            ds.levels[0],
            count(Split::Train),
            count(Split::Val),
            count(Split::Test)
        );
        Ok(ds)
    }
}

/// `animelens train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output folder for checkpoints, metrics and plots.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Input size in pixels (64..=224).
    #[arg(long, default_value_t = 96)]
    input_size: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Maximum epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 1e-3)]
    weight_decay: f64,
    /// Cosine warm-restart period in epochs.
    #[arg(long, default_value_t = 10)]
    restart_epochs: usize,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f32,
    /// Dropout before the heads.
    #[arg(long, default_value_t = 0.5)]
    dropout: f32,
    /// Enable mixup with this α (the guide uses 0.4).
    #[arg(long, num_args = 0..=1, default_missing_value = "0.4")]
    mixup: Option<f32>,
    /// Class-balanced sampling (oversample small classes).
    #[arg(long)]
    balanced: bool,
    /// Early stopping patience (epochs without lower validation loss).
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Freeze the first N layers (transfer learning; the guide freezes about 2/3: 9 of 13).
    #[arg(long, default_value_t = 0)]
    freeze: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Turn augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Colour space fed to the network.
    #[arg(long, value_enum, default_value = "rgb")]
    color: ColorArg,
    /// Equalise the luma histogram.
    #[arg(long)]
    equalize: bool,
    /// Stop each epoch after N batches (quick experiments).
    #[arg(long)]
    max_batches: Option<usize>,
    /// Initialise from a safetensors file with torchvision names (mismatched heads re-initialised).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Resume from a checkpoint written by a previous run (e.g. runs/train/last).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Further labelled datasets trained together with --data in one joint label space (same
    /// --labels / --split-column settings for manifests), e.g. ../shared/data/pokemon/manifest.csv.
    #[arg(long, value_delimiter = ',')]
    also_data: Vec<PathBuf>,
    /// Unlabelled pictures for the instance term (folders or manifests with a `path` column);
    /// one in ten is held out of training (see `eval --unknown`).
    #[arg(long, value_delimiter = ',')]
    unlabelled: Vec<PathBuf>,
    /// Unlabelled pictures trained as one class each (exemplar classes, in the joint label space
    /// of the primary level), e.g. one portrait per character: every labelled class then meets
    /// thousands of negatives. Folders or manifests with a `path` column; the same tenth as
    /// --unlabelled's is held out. Needs a one-level label space.
    #[arg(long, value_delimiter = ',')]
    exemplars: Vec<PathBuf>,
    /// Classification loss: softmax (linear heads) or an additive margin on cosine heads.
    #[arg(long, value_enum, default_value = "softmax")]
    loss: LossArg,
    /// Margin of --loss cosface (cosine) or arcface (radians).
    #[arg(long)]
    margin: Option<f64>,
    /// Logit scale of the cosine heads.
    #[arg(long, default_value_t = 30.0)]
    scale: f64,
    /// Weight of the instance term (InfoNCE over two views of each unlabelled picture); 0 turns it off.
    #[arg(long, default_value_t = 1.0)]
    instance_weight: f64,
    /// Unlabelled pictures per batch (two views each).
    #[arg(long, default_value_t = 16)]
    instance_pairs: usize,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.1)]
    temperature: f64,
    /// How the instance term's two views differ: `copy` (colour jitter and greyscale, as copy
    /// detection needs) or `colour` (crops, mirror, blur and JPEG, colours kept: for a
    /// character embedding).
    #[arg(long, value_enum, default_value = "copy")]
    views: ViewsArg,
    /// Characters to leave out of training entirely (the unseen-character protocol of `eval`).
    #[arg(long, value_delimiter = ',')]
    hold_out: Vec<String>,
    #[command(flatten)]
    prune: PruneArgs,
}

/// Magnitude pruning options (`train` keeps the pruned weights at zero; `prune` only cuts).
#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct PruneArgs {
    /// Zero every convolution and head weight with |w| below this (the guide: 0.01), starting
    /// weights included, and keep them at zero through training (fine-tuning with --init).
    #[arg(long)]
    prune_threshold: Option<f32>,
    /// Zero this share (0..1) of the smallest-magnitude convolution and head weights instead.
    #[arg(long)]
    prune_sparsity: Option<f32>,
}

impl PruneArgs {
    fn rule(&self) -> Result<Option<PruneRule>> {
        Ok(match (self.prune_threshold, self.prune_sparsity) {
            (Some(t), _) if !(t >= 0.0 && t.is_finite()) => {
                bail!("--prune-threshold must be a non-negative number, got {t}")
            }
            (_, Some(s)) if !(0.0..1.0).contains(&s) => {
                bail!("--prune-sparsity must be at least 0 and below 1, got {s}")
            }
            (Some(t), _) => Some(PruneRule::Threshold(t)),
            (_, Some(s)) => Some(PruneRule::Sparsity(s)),
            (None, None) => None,
        })
    }
}

/// Classification loss on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum LossArg {
    /// Label-smoothed softmax cross-entropy on linear heads.
    Softmax,
    /// CosFace: s·(cos θ − m) on the target (default m 0.35).
    Cosface,
    /// ArcFace: s·cos(θ + m) on the target (default m 0.5).
    Arcface,
}

/// Instance-view preset on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ViewsArg {
    /// Copy-detection views: colour jitter, hue, greyscale.
    Copy,
    /// Colour-preserving views.
    Colour,
}

/// Colour space choice on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ColorArg {
    /// RGB.
    Rgb,
    /// YCrCb.
    Ycrcb,
}

/// Runs `animelens train`.
pub fn run_train(args: TrainArgs) -> Result<()> {
    let mut parts = vec![args.data.load()?];
    for extra in &args.also_data {
        parts.push(args.data.load_from(extra)?);
    }
    for source in &args.exemplars {
        let pictures = unlabelled_images(source)?.train;
        tracing::info!("{}: {} exemplar classes", source.display(), pictures.len());
        if parts[0].levels.len() != 1 {
            bail!(
                "--exemplars adds classes at the primary level only; train with one label level (--labels {}=COLUMN)",
                parts[0].levels[0]
            );
        }
        parts.push(Dataset::exemplars(&parts[0].levels[0], &pictures)?);
    }
    let dataset = if parts.len() == 1 {
        parts.remove(0)
    } else {
        let joint = Dataset::union(parts)?;
        tracing::info!(
            "joint label space: {} images, {} classes at '{}'",
            joint.samples.len(),
            joint.classes[0].len(),
            joint.levels[0]
        );
        joint
    };
    let mut unlabelled = Vec::new();
    for source in &args.unlabelled {
        let u = unlabelled_images(source)?;
        tracing::info!(
            "{}: {} unlabelled pictures for training, {} held out",
            source.display(),
            u.train.len(),
            u.held_out.len()
        );
        unlabelled.extend(u.train);
    }
    let margin = match args.loss {
        LossArg::Softmax => None,
        LossArg::Cosface => Some(Margin::CosFace {
            margin: args.margin.unwrap_or(0.35),
        }),
        LossArg::Arcface => Some(Margin::ArcFace {
            margin: args.margin.unwrap_or(0.5),
        }),
    };
    let instance = (args.instance_weight > 0.0 && !unlabelled.is_empty()).then(|| InstanceTerm {
        pairs: args.instance_pairs,
        weight: args.instance_weight,
        temperature: args.temperature,
        views: match args.views {
            ViewsArg::Copy => ViewConfig::default(),
            ViewsArg::Colour => ViewConfig::colour_preserving(),
        },
    });
    let cfg = TrainConfig {
        input_size: args.input_size,
        batch_size: args.batch_size,
        epochs: args.epochs,
        lr: args.lr,
        weight_decay: args.weight_decay,
        restart_epochs: args.restart_epochs,
        label_smoothing: args.label_smoothing,
        dropout: args.dropout,
        mixup_alpha: args.mixup,
        balanced: args.balanced,
        patience: args.patience,
        freeze: args.freeze,
        seed: args.seed,
        augment: (!args.no_augment).then(Default::default),
        color: match args.color {
            ColorArg::Rgb => ColorSpace::Rgb,
            ColorArg::Ycrcb => ColorSpace::Ycrcb,
        },
        equalize: args.equalize,
        max_batches: args.max_batches,
        margin,
        scale: args.scale,
        instance,
        held_out: args.hold_out,
        prune: args.prune.rule()?,
        ..TrainConfig::default()
    };
    let opts = TrainOptions {
        out_dir: args.out.clone(),
        init: args.init,
        resume: args.resume,
        progress: true,
        unlabelled,
    };
    let report = train(&dataset, &cfg, &opts)?;
    println!(
        "best val top-1 {:.4} at epoch {} ({} epochs run{}); checkpoint {}",
        report.best_val_top1,
        report.best_epoch,
        report.history.len(),
        if report.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        report.best_checkpoint.display()
    );
    if !report.unreadable.is_empty() {
        println!(
            "{} unreadable images were skipped (see the log for each path)",
            report.unreadable.len()
        );
    }
    Ok(())
}

/// `animelens eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (`NAME.safetensors` or `NAME`; default: the shipped demo model).
    #[arg(long, default_value = super::model_choice::DEFAULT_MODEL, hide_default_value = true)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Split to evaluate: train, val, test, or all (every image, e.g. a folder of `<label>/`
    /// images kept out of training).
    #[arg(long, default_value = "val")]
    split: String,
    /// Folder for report.json, report.md and confusion matrices.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
    /// Also run the generalisation protocols (k-shot enrolment of unseen characters, open set,
    /// score calibration) over all splits, with the characters the model was trained without.
    #[arg(long)]
    unseen: bool,
    /// Characters to treat as unseen instead of the card's held-out list (for models trained on
    /// everything, whose figures then flatter them).
    #[arg(long, value_delimiter = ',')]
    unseen_characters: Vec<String>,
    /// Unlabelled collections whose held-out tenth (never trained on) are extra unknown pictures.
    #[arg(long, value_delimiter = ',')]
    unknown: Vec<PathBuf>,
    /// Enrolment sizes of the k-shot protocol.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    shots: Vec<usize>,
    /// Random enrolment draws per size.
    #[arg(long, default_value_t = 20)]
    episodes: usize,
    /// Record the fitted cosine → confidence calibration in the model's card (with --unseen),
    /// together with the palette and block weights it was fitted for.
    #[arg(long)]
    calibrate: bool,
    /// Evaluate the character vector with the palette fused at this weight (0 turns it off)
    /// instead of the card's choice; with --calibrate the card records it.
    #[arg(long)]
    palette_weight: Option<f32>,
    /// Evaluate the character vector with a mid-level block's pooled activation fused at this
    /// weight (0 turns it off) instead of the card's choice; with --calibrate the card records it.
    #[arg(long)]
    block_weight: Option<f32>,
    /// The Inception block --block-weight fuses.
    #[arg(long, default_value = DEFAULT_BLOCK)]
    block: String,
    /// Evaluate the fused parts raw even where the card marks them whitened (a before/after
    /// comparison of `learn-whitening`); with --calibrate the card records them unwhitened.
    #[arg(long)]
    no_whitening: bool,
}

/// Everything `eval` measured.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    model: String,
    fingerprint: String,
    data: String,
    split: String,
    images: usize,
    unreadable: usize,
    heads: Vec<HeadReport>,
    retrieval: RetrievalReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    generalisation: Option<GeneralisationReport>,
}

/// The fusion `eval` measures: the card's, with --palette-weight / --block-weight overriding its
/// weights (a part keeps the card's whitening) and --no-whitening turning the whitenings off.
fn eval_fusion(
    args: &EvalArgs,
    model: &animelens_models::checkpoint::LoadedModel,
) -> Result<Fusion> {
    let card = &model.card;
    let whiten = !args.no_whitening;
    let palette = match args.palette_weight {
        Some(w) => Some(PaletteFusion::new(w)?),
        None => card.palette,
    }
    .map(|p| PaletteFusion {
        whitened: whiten && card.palette.is_some_and(|c| c.whitened),
        ..p
    });
    let block = match args.block_weight {
        Some(weight) => Some(BlockFusion {
            block: args.block.clone(),
            weight,
            whitened: false,
        }),
        None => card.block.clone(),
    }
    .map(|b| BlockFusion {
        whitened: whiten && (card.block.as_ref()).is_some_and(|c| c.whitened && c.block == b.block),
        ..b
    });
    Ok(Fusion::new(palette, block, model.net.architecture())?.with_whitenings(&args.model)?)
}

/// Runs `animelens eval`.
pub fn run_eval(args: EvalArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "all" => None,
        name => Some(
            Split::parse(name)
                .with_context(|| format!("unknown split '{name}': use train, val, test or all"))?,
        ),
    };
    let model = animelens_models::checkpoint::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let fusion = eval_fusion(&args, &model)?;
    let full = args.data.load()?;
    let unseen = if args.unseen_characters.is_empty() {
        // A model trained on several datasets holds out characters of each: keep this data's.
        let (here, elsewhere): (Vec<String>, Vec<String>) = model
            .card
            .held_out()
            .into_iter()
            .partition(|c| full.classes[0].contains(c));
        if !elsewhere.is_empty() {
            tracing::info!(
                "{} of the card's held-out characters are not in this data (another dataset's)",
                elsewhere.len()
            );
        }
        here
    } else {
        args.unseen_characters.clone()
    };
    // The closed-set figures are about the characters the heads know.
    let known: Vec<String> = unseen
        .iter()
        .filter(|u| full.classes[0].contains(u))
        .cloned()
        .collect();
    let dataset = if known.is_empty() {
        full.clone()
    } else {
        full.without_characters(&known)?
    };
    if dataset.levels.first() != model.card.heads.first().map(|h| &h.level) {
        tracing::warn!(
            "dataset primary level {:?} differs from the model's",
            dataset.levels.first()
        );
    }
    let pre = &model.card.preprocessing;
    let samples = match split {
        Some(split) => dataset.split(split),
        None => dataset.samples.clone(),
    };
    if samples.is_empty() {
        let present: Vec<&str> = [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .filter(|s| dataset.samples.iter().any(|x| x.split == *s))
            .map(Split::name)
            .collect();
        bail!(
            "{} has no {} images; pass --split with one it has ({}) or --split all",
            args.data.data.display(),
            args.split,
            present.join(", ")
        );
    }
    let (set, failures) = decode_all(&samples, pre.input_size, true);
    if set.images.is_empty() {
        bail!(
            "the {} split of {} has no readable images",
            args.split,
            args.data.data.display()
        );
    }
    let set = Arc::new(set);
    let outputs = run_set(
        &model.serving()?,
        &set,
        pre,
        32,
        fusion.tap().map(|t| t.blocks),
    )?;
    let mut heads = Vec::new();
    for (h, head) in model.card.heads.iter().enumerate() {
        // Map dataset class indices to the model's label order by name.
        let Some(level) = dataset.levels.iter().position(|l| l == &head.level) else {
            continue;
        };
        let labels: Option<Vec<u32>> = set
            .labels
            .iter()
            .map(|l| {
                head.labels
                    .iter()
                    .position(|n| n == &dataset.classes[level][l[level] as usize])
                    .map(|i| i as u32)
            })
            .collect();
        let Some(labels) = labels else {
            tracing::warn!(
                "head '{}': the data has labels the model does not know; skipped",
                head.level
            );
            continue;
        };
        heads.push(head_report(
            &head.level,
            &head.labels,
            &outputs.logits[h],
            &labels,
        ));
    }
    let primary: Vec<u32> = set.labels.iter().map(|l| l[0]).collect();
    let vectors = fusion.vectors(outputs.embeddings, outputs.blocks, &set.images);
    let retrieval = retrieval(&vectors, &primary)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (h, report) in heads.iter().enumerate() {
        let labels = &model.card.heads[h].labels;
        let path = args.out.join(format!("confusion-{}.png", report.level));
        confusion_matrix(
            &path,
            &format!("{} confusion ({})", report.level, args.split),
            labels,
            &report.confusion,
        )?;
    }
    let report = EvalReport {
        model: args.model.display().to_string(),
        fingerprint: model.card.fingerprint.clone(),
        data: args.data.data.display().to_string(),
        split: args.split.clone(),
        images: set.images.len(),
        unreadable: failures.len(),
        heads,
        retrieval,
        generalisation: None,
    };
    let generalisation = if args.unseen {
        Some(generalisation::run(
            &model,
            &full,
            &GeneralisationArgs {
                unseen: &unseen,
                unknown: &args.unknown,
                shots: &args.shots,
                episodes: args.episodes,
                calibrate: args.calibrate.then_some(args.model.as_path()),
                fusion: &fusion,
                out: &args.out,
            },
        )?)
    } else {
        None
    };
    let report = EvalReport {
        generalisation,
        ..report
    };
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    let mut md = eval_markdown(&report);
    if let Some(g) = &report.generalisation {
        md += &generalisation::markdown(g);
    }
    std::fs::write(args.out.join("report.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn eval_markdown(r: &EvalReport) -> String {
    let mut s = format!(
        "# Evaluation of {} on {} ({} split, {} images)\n\n| head | top-1 | top-5 | classes |\n|---|---|---|---|\n",
        r.model, r.data, r.split, r.images
    );
    for h in &r.heads {
        s += &format!(
            "| {} | {:.4} | {:.4} | {} |\n",
            h.level,
            h.top1,
            h.top5,
            h.classes.len()
        );
    }
    s += &format!(
        "\nSame-character retrieval on the embeddings (leave-one-out, {} queries): recall@1 {:.4}, mAP@10 {:.4}\n",
        r.retrieval.queries, r.retrieval.recall_at_1, r.retrieval.map_at_10
    );
    if let Some(h) = r.heads.first() {
        s += &format!("\n## Per-class precision / recall ({})\n\n| class | precision | recall | support |\n|---|---|---|---|\n", h.level);
        for c in &h.classes {
            s += &format!(
                "| {} | {:.3} | {:.3} | {} |\n",
                c.label, c.precision, c.recall, c.support
            );
        }
    }
    s
}

/// `animelens export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint to convert (`NAME.safetensors` or `NAME`).
    #[arg(long)]
    model: PathBuf,
    /// Output: a checkpoint name (`NAME` → `NAME.safetensors` + `NAME.json`), or with
    /// `--format onnx` the `.onnx` file.
    #[arg(long)]
    out: PathBuf,
    /// What to write: an AnimeLens checkpoint, or an ONNX graph (opset 17) for ONNX Runtime and
    /// other runtimes.
    #[arg(long, value_enum, default_value = "safetensors")]
    format: ExportFormat,
    /// Storage precision of the weights (default: f16 for a checkpoint; ONNX files are f32).
    /// `int8` also makes the network run in int8 and needs `--calibrate`.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// With `--dtype int8`: folders or CSV manifests of pictures of the domain whose
    /// activations set the int8 scales (a few hundred are enough).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    calibrate: Vec<PathBuf>,
    /// With `--dtype int8`: calibration pictures used (a seeded sample).
    #[arg(long, default_value_t = 300)]
    calibration_pictures: usize,
    /// With `--dtype int8`: each activation's range, `max` (the largest value seen) or a
    /// percentile of its values such as `99.99`.
    #[arg(long, default_value = "max")]
    calibration: String,
    /// With `--format onnx`: also write a parity sample to this folder, seeded random images
    /// at the model's input size and 1.5× that size, with this engine's outputs for them, as
    /// `.npy` files named after the graph's inputs and outputs (`size-<S>/images.npy`, ...), for
    /// checking a runtime against the file (`models/benches/reference/onnx_parity.py`).
    #[arg(long)]
    parity_sample: Option<PathBuf>,
}

/// File format for `export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// `NAME.safetensors` + `NAME.json`, loadable by every AnimeLens command.
    Safetensors,
    /// One `.onnx` file: BatchNorm folded, dynamic batch and size, the card in its metadata.
    Onnx,
}

/// Weight precision for `export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    /// 32-bit floats (as trained).
    F32,
    /// 16-bit floats: half the size, same accuracy to ~3 decimals.
    F16,
    /// bfloat16.
    Bf16,
    /// 7-bit convolution codes with per-channel scales, run by the int8 kernels: a quarter of
    /// the size (needs `--calibrate`).
    Int8,
}

/// Runs `animelens export`: rewrites a checkpoint's weights at another precision, with a new
/// fingerprint, or writes it as an ONNX graph.
pub fn run_export(args: ExportArgs) -> Result<()> {
    let model = animelens_models::checkpoint::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    if args.format == ExportFormat::Onnx {
        return export_onnx(&model, &args);
    }
    let dtype = args.dtype.unwrap_or(DtypeArg::F16);
    if (dtype == DtypeArg::Int8) == args.calibrate.is_empty() {
        bail!("--dtype int8 and --calibrate DIR go together: int8 needs calibration pictures");
    }
    if model.card.int8.is_some() {
        bail!("the model is int8: its weights are already quantised; export its original instead");
    }
    let dtype = match dtype {
        DtypeArg::F32 => candle_core::DType::F32,
        DtypeArg::F16 => candle_core::DType::F16,
        DtypeArg::Bf16 => candle_core::DType::BF16,
        DtypeArg::Int8 => {
            let calibration = super::int8_export::Calibration {
                sources: &args.calibrate,
                pictures: args.calibration_pictures,
                rule: &args.calibration,
            };
            return super::int8_export::export_int8(&model, &args.model, &calibration, &args.out);
        }
    };
    let card = animelens_models::checkpoint::save(&model.varmap, &args.out, &model.card, dtype)?;
    super::checkpoint_files::copy_whitenings(&args.model, &args.out)?;
    let (weights, _) = animelens_models::checkpoint::checkpoint_paths(&args.out);
    let size = std::fs::metadata(&weights)?.len();
    println!(
        "wrote {} ({:.1} MB, {:?}), fingerprint {}",
        weights.display(),
        size as f64 / 1e6,
        dtype,
        card.fingerprint
    );
    Ok(())
}

/// `export --format onnx`: the folded network as one ONNX file, and the parity sample if asked.
fn export_onnx(model: &animelens_models::checkpoint::LoadedModel, args: &ExportArgs) -> Result<()> {
    use animelens_models::onnx;
    if args.dtype.is_some_and(|d| d != DtypeArg::F32) || model.card.int8.is_some() {
        bail!("ONNX files are written in f32 from an f32 or f16 checkpoint: drop --dtype or pass --dtype f32");
    }
    let net = animelens_models::folded::FoldedNetwork::new(&model.net)?;
    let bytes = onnx::export(&net, &model.card)?;
    write_file(&args.out, &bytes)?;
    println!(
        "wrote {} ({:.1} MB, ONNX opset {}, {}), inputs `{}` (N, 3, H, W), outputs `{}`{}",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        onnx::OPSET,
        model.card.architecture,
        onnx::INPUT,
        onnx::EMBEDDING,
        model
            .card
            .heads
            .iter()
            .map(|h| format!(", `{}`", onnx::logits_output(&h.level)))
            .collect::<String>()
    );
    if let Some(dir) = &args.parity_sample {
        let size = model.card.preprocessing.input_size;
        for (i, (batch, side)) in [(3, size), (1, size * 3 / 2)].into_iter().enumerate() {
            let folder = dir.join(format!("size-{side}"));
            std::fs::create_dir_all(&folder).with_context(|| {
                format!(
                    "cannot create {}: check the path and permissions",
                    folder.display()
                )
            })?;
            for array in onnx::parity_sample(&net, &model.card, batch, side, i as u64)? {
                let path = folder.join(format!("{}.npy", array.name));
                let bytes = animelens_models::npy::encode(&array.shape, &array.values);
                write_file(&path, &bytes)?;
            }
        }
        println!("wrote the parity sample to {}", dir.display());
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| {
        format!(
            "cannot write {}: check the folder exists and has free space",
            path.display()
        )
    })
}

/// `animelens prune`.
#[derive(Args, Debug)]
pub struct PruneCommandArgs {
    /// Checkpoint to prune (`NAME.safetensors` or `NAME`).
    #[arg(long)]
    model: PathBuf,
    /// Output checkpoint name (`NAME` → `NAME.safetensors` + `NAME.json`).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    prune: PruneArgs,
}

/// Runs `animelens prune`: zeroes the small weights of a checkpoint without fine-tuning (fine-tune
/// with `train --init OUT --prune-threshold T`, which keeps them at zero).
pub fn run_prune(args: PruneCommandArgs) -> Result<()> {
    let Some(rule) = args.prune.rule()? else {
        bail!(
            "say what to prune: --prune-threshold 0.01 (the guide's rule) or --prune-sparsity 0.4"
        );
    };
    let model = animelens_models::checkpoint::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let before = zero_weights(&model.varmap)?;
    let mask = PruneMask::new(&model.varmap, rule)?;
    mask.apply(&model.varmap)?;
    let after = zero_weights(&model.varmap)?;
    let mut card = model.card.clone();
    card.metrics.clear();
    card.metrics.insert("sparsity".into(), after.sparsity());
    card.similarity = None;
    if let serde_json::Value::Object(training) = &mut card.training {
        training.insert("pruned".into(), serde_json::to_value(rule)?);
    }
    let saved = animelens_models::checkpoint::save(
        &model.varmap,
        &args.out,
        &card,
        candle_core::DType::F32,
    )?;
    println!(
        "pruned {} of {} convolution and head weights ({} were zero before): {} of {} parameters left non-zero ({:.1}% sparsity); wrote {} (fingerprint {})",
        mask.stats().pruned,
        after.prunable,
        before.pruned,
        after.parameters - after.pruned,
        after.parameters,
        100.0 * after.sparsity(),
        animelens_models::checkpoint::checkpoint_paths(&args.out).0.display(),
        saved.fingerprint
    );
    Ok(())
}

/// `animelens classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Checkpoint (`NAME.safetensors` or `NAME`; default: the shipped demo model).
    #[arg(long, default_value = super::model_choice::DEFAULT_MODEL, hide_default_value = true)]
    model: PathBuf,
    /// Labels to show per head.
    #[arg(long, short = 'k', default_value_t = 3)]
    top_k: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn read_images(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .with_context(|| format!("cannot read image {}: check the path", p.display()))
        })
        .collect()
}

/// Runs `animelens classify`.
pub fn run_classify(args: ClassifyArgs) -> Result<()> {
    let model = Classifier::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let bytes = read_images(&args.images)?;
    let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    let mut failed = 0;
    for (path, result) in args
        .images
        .iter()
        .zip(model.predict_batch(&refs, args.top_k, None))
    {
        match result {
            Ok(p) if args.json => {
                let heads = serde_json::to_value(&p.heads)?;
                println!("{}", serde_json::json!({ "image": path, "heads": heads }));
            }
            Ok(p) => {
                let heads: Vec<String> = p
                    .heads
                    .iter()
                    .map(|h| {
                        let top: Vec<String> = h
                            .top
                            .iter()
                            .map(|l| format!("{} {:.1}%", l.label, l.probability * 100.0))
                            .collect();
                        format!("{}: {}", h.head, top.join(", "))
                    })
                    .collect();
                println!("{}\t{}", path.display(), heads.join(" | "));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be classified",
            args.images.len()
        );
    }
    Ok(())
}

/// `animelens embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Checkpoint (`NAME.safetensors` or `NAME`; default: the shipped demo model).
    #[arg(long, default_value = super::model_choice::DEFAULT_MODEL, hide_default_value = true)]
    model: PathBuf,
    /// Output file: `.npy` (float32 matrix, one row per image) or `.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Images to embed.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Runs `animelens embed`.
pub fn run_embed(args: EmbedArgs) -> Result<()> {
    let model = Classifier::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let fingerprint = model.fingerprint();
    let bytes = read_images(&args.images)?;
    let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    let mut rows = Vec::new();
    for (path, r) in args.images.iter().zip(model.predict_batch(&refs, 1, None)) {
        let p = r.with_context(|| format!("cannot embed {}", path.display()))?;
        rows.push(p.embedding);
    }
    let is_npy = args.out.extension().is_some_and(|e| e == "npy");
    if is_npy {
        animelens_models::npy::write_matrix(&args.out, &rows)
    } else {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
        for (path, v) in args.images.iter().zip(&rows) {
            writeln!(
                f,
                "{}",
                serde_json::json!({ "image": path, "model": fingerprint, "embedding": v })
            )?;
        }
        f.flush()
    }
    .with_context(|| {
        format!(
            "cannot write {}: check the folder exists and has free space",
            args.out.display()
        )
    })?;
    println!(
        "wrote {} embeddings of dimension {} to {}",
        rows.len(),
        model.dim(),
        args.out.display()
    );
    Ok(())
}
