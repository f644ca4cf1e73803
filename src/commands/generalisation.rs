//! `animelens eval --unseen`: the protocols that measure whether the embedding generalises beyond
//! the characters the model was trained on (k-shot enrolment of unseen characters, open-set
//! recognition, the catalogue's own threshold rule, score calibration with its histogram PNG),
//! and `--calibrate`, which records the fitted cosine → confidence map in the model card.

use animelens_index::open_set_threshold;
use animelens_models::checkpoint::{write_card, LoadedModel};
use animelens_models::data::{decode_all, unlabelled_images, Dataset, Sample, Split};
use animelens_models::fusion::Fusion;
use animelens_models::generalisation::{
    few_shot, fit_calibration, histogram, median, open_set_report, open_set_scores, pair_cosines,
    training_centroids, FewShotReport, OpenSetReport, ProtocolSet, ScoreCalibration,
};
use animelens_models::metrics::run_set;
use animelens_models::plots::{line_chart, Series};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the protocols are run with.
pub struct GeneralisationArgs<'a> {
    /// Characters treated as unseen (held out of training).
    pub unseen: &'a [String],
    /// Unlabelled collections whose held-out tenth are extra unknown pictures.
    pub unknown: &'a [PathBuf],
    /// Enrolment sizes.
    pub shots: &'a [usize],
    /// Random enrolment draws per size.
    pub episodes: usize,
    /// Record the fitted calibration in the model card at this checkpoint path.
    pub calibrate: Option<&'a Path>,
    /// The fusion of the character vector (recorded with the calibration).
    pub fusion: &'a Fusion,
    /// Folder for the histogram PNG.
    pub out: &'a Path,
}

/// The catalogue's open-set rule (`index calibrate`) applied to this model.
#[derive(Debug, Serialize)]
pub struct CatalogueRule {
    /// Threshold the rule picks from the seen characters' non-training images.
    pub threshold: f32,
    /// Unknown queries rejected at it.
    pub unknown_rejected: f64,
    /// Known queries rejected at it.
    pub known_rejected: f64,
}

/// Everything the protocols measured.
#[derive(Debug, Serialize)]
pub struct GeneralisationReport {
    /// Characters treated as unseen.
    pub unseen_characters: Vec<String>,
    /// Whether the model's card says they were held out of its training.
    pub held_out_in_training: bool,
    /// k-shot enrolment per k.
    pub few_shot: Vec<FewShotReport>,
    /// Open set with the unseen characters as unknowns.
    pub open_set: OpenSetReport,
    /// Open set with the unseen characters and the extra unknown pictures.
    pub open_set_with_extra: Option<OpenSetReport>,
    /// The catalogue's rule.
    pub catalogue_rule: CatalogueRule,
    /// Fitted cosine → P(same character).
    pub calibration: Option<ScoreCalibration>,
    /// Same- and different-character pairs among the non-training images.
    pub pairs: (usize, usize),
    /// Median cosine of each non-training image's best match that is another picture.
    pub median_best_other_picture: f32,
    /// Median cosine of each non-training image's best match of another character.
    pub median_best_other_character: f32,
    /// Extra unknown pictures used.
    pub extra_unknown: usize,
}

fn embed(
    model: &LoadedModel,
    fusion: &Fusion,
    samples: &[Sample],
) -> Result<(Vec<Vec<f32>>, Vec<Sample>)> {
    let pre = &model.card.preprocessing;
    let (set, failures) = decode_all(samples, pre.input_size, true);
    for (path, reason) in &failures {
        tracing::warn!("skipping unreadable image {}: {reason}", path.display());
    }
    let failed: std::collections::HashSet<&PathBuf> = failures.iter().map(|f| &f.0).collect();
    let kept: Vec<Sample> = samples
        .iter()
        .filter(|s| !failed.contains(&s.path))
        .cloned()
        .collect();
    let set = Arc::new(set);
    let tap = fusion.tap().map(|t| t.blocks);
    let outputs = run_set(&model.serving()?, &set, pre, 32, tap)?;
    let vectors = fusion.vectors(outputs.embeddings, outputs.blocks, &set.images);
    Ok((vectors, kept))
}

/// Runs the protocols on every image of `dataset`.
pub fn run(
    model: &LoadedModel,
    dataset: &Dataset,
    args: &GeneralisationArgs,
) -> Result<GeneralisationReport> {
    let names = &dataset.classes[0];
    if let Some(missing) = args.unseen.iter().find(|u| !names.contains(u)) {
        bail!("unseen character '{missing}' is not in the data; pass names from its folders");
    }
    if args.unseen.is_empty() || args.unseen.len() == names.len() {
        bail!("the protocols need some unseen and some seen characters: pass --unseen-characters or evaluate a model trained with --hold-out");
    }
    let (embeddings, samples) = embed(model, args.fusion, &dataset.samples)?;
    let set = ProtocolSet {
        character: samples.iter().map(|s| s.labels[0] as usize).collect(),
        train_split: samples.iter().map(|s| s.split == Split::Train).collect(),
        unseen: names.iter().map(|n| args.unseen.contains(n)).collect(),
        embeddings,
    };
    let few: Vec<FewShotReport> = args
        .shots
        .iter()
        .map(|&k| few_shot(&set, k, args.episodes, 7))
        .collect();
    let scores = open_set_scores(&set, &[]);
    let open_set = open_set_report(&scores);

    let mut extra = Vec::new();
    for source in args.unknown {
        let held_out = unlabelled_images(source)?.held_out;
        let samples: Vec<Sample> = held_out
            .into_iter()
            .map(|path| Sample {
                path,
                labels: Vec::new(),
                split: Split::Test,
            })
            .collect();
        extra.extend(embed(model, args.fusion, &samples)?.0);
    }
    let open_set_with_extra =
        (!extra.is_empty()).then(|| open_set_report(&open_set_scores(&set, &extra)));

    // The catalogue's rule: seen centroids from training images, calibrated on the seen
    // characters' other images with simulated unknowns.
    let centroids: Vec<(String, Vec<f32>)> = training_centroids(&set)
        .into_iter()
        .zip(names)
        .filter_map(|(c, name)| Some((name.clone(), c?)))
        .collect();
    let calibration_samples: Vec<(Vec<f32>, String)> = (0..set.embeddings.len())
        .filter(|&i| !set.train_split[i] && !set.unseen[set.character[i]])
        .map(|i| (set.embeddings[i].clone(), names[set.character[i]].clone()))
        .collect();
    let rule = open_set_threshold(&calibration_samples, &centroids);
    let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
    let catalogue_rule = CatalogueRule {
        threshold: rule.threshold,
        unknown_rejected: share(
            scores
                .unknown
                .iter()
                .filter(|&&s| s < rule.threshold)
                .count(),
            scores.unknown.len(),
        ),
        known_rejected: share(
            scores.known.iter().filter(|k| k.0 < rule.threshold).count(),
            scores.known.len(),
        ),
    };

    // Calibration pairs: every image the model did not train on (seen characters' validation
    // images and all images of unseen characters).
    let pool: Vec<usize> = (0..set.embeddings.len())
        .filter(|&i| !set.train_split[i] || set.unseen[set.character[i]])
        .collect();
    let pool_vectors: Vec<Vec<f32>> = pool.iter().map(|&i| set.embeddings[i].clone()).collect();
    let pool_labels: Vec<usize> = pool.iter().map(|&i| set.character[i]).collect();
    let pairs = pair_cosines(&pool_vectors, &pool_labels);
    let (same, different) = (&pairs.same, &pairs.different);
    let calibration = fit_calibration(same, different);
    plot_histograms(args.out, same, different, calibration)?;
    if let (Some(path), Some(c)) = (args.calibrate, calibration) {
        let mut card = model.card.clone();
        card.similarity = Some(c);
        card.palette = args.fusion.palette;
        card.block = args.fusion.block.clone();
        write_card(path, &card)?;
        tracing::info!(
            "calibration a = {:.3}, b = {:.3} written to the model card",
            c.a,
            c.b
        );
    }
    let held_out = model.card.held_out();
    let held_out_in_training = args.unseen.iter().all(|u| held_out.contains(u));
    Ok(GeneralisationReport {
        unseen_characters: args.unseen.to_vec(),
        held_out_in_training,
        few_shot: few,
        open_set,
        open_set_with_extra,
        catalogue_rule,
        calibration,
        pairs: (same.len(), different.len()),
        median_best_other_picture: median(pairs.best_other_picture.clone()),
        median_best_other_character: median(pairs.best_other_label.clone()),
        extra_unknown: extra.len(),
    })
}

fn plot_histograms(
    out: &Path,
    same: &[f32],
    different: &[f32],
    calibration: Option<ScoreCalibration>,
) -> Result<()> {
    let bins = 50;
    let centre = |k: usize| -1.0 + (k as f64 + 0.5) * 2.0 / bins as f64;
    let series = |name: &'static str, values: &[f32]| Series {
        name,
        points: histogram(values, -1.0, 1.0, bins)
            .into_iter()
            .enumerate()
            .map(|(k, f)| (centre(k), f))
            .collect(),
    };
    let mut all = vec![
        series("same character", same),
        series("different characters", different),
    ];
    if let Some(c) = calibration {
        // Scaled to the histograms' height so that the curve shares the axis.
        let top = all
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        all.push(Series {
            name: "calibrated confidence (× max share)",
            points: (0..bins)
                .map(|k| (centre(k), c.confidence(centre(k) as f32) as f64 * top))
                .collect(),
        });
    }
    std::fs::create_dir_all(out)?;
    line_chart(
        &out.join("cosine-histograms.png"),
        "cosine of pairs of pictures the model did not train on (share of pairs per bin)",
        "cosine",
        &all,
    )?;
    Ok(())
}

/// The report as Markdown.
pub fn markdown(r: &GeneralisationReport) -> String {
    let mut s = format!(
        "\n## Generalisation (unseen characters: {}; held out in training: {})\n\n| k | unseen top-1 | seen top-1 (same enrolment) | unseen queries |\n|---|---|---|---|\n",
        r.unseen_characters.join(", "),
        r.held_out_in_training
    );
    for f in &r.few_shot {
        s += &format!(
            "| {} | {:.4} | {:.4} | {} |\n",
            f.shots, f.unseen_top1, f.seen_top1, f.unseen_queries
        );
    }
    let row = |name: &str, o: &OpenSetReport| {
        format!(
            "| {name} | {} / {} | {:.4} | {:.3} | {:.4} | {:.4} | {:.3} / {:.3} |\n",
            o.known,
            o.unknown,
            o.auroc,
            o.threshold_at_5pct,
            o.unknown_rejected_at_5pct,
            o.known_correct_at_5pct,
            o.median_known,
            o.median_unknown
        )
    };
    s += "\n| open set | known / unknown | AUROC | t (5% known rejected) | unknown rejected | known correct | median best cosine known / unknown |\n|---|---|---|---|---|---|---|\n";
    s += &row("unseen characters", &r.open_set);
    if let Some(o) = &r.open_set_with_extra {
        s += &row(&format!("+ {} extra unknown pictures", r.extra_unknown), o);
    }
    s += &format!(
        "\nCatalogue rule (`index calibrate`): threshold {:.3}, unknown rejected {:.4}, known rejected {:.4}.\n",
        r.catalogue_rule.threshold, r.catalogue_rule.unknown_rejected, r.catalogue_rule.known_rejected
    );
    s += &format!(
        "Pairs: {} same / {} different character; median best other picture {:.3}, best other character {:.3}.\n",
        r.pairs.0, r.pairs.1, r.median_best_other_picture, r.median_best_other_character
    );
    if let Some(c) = r.calibration {
        s += &format!(
            "Calibration: confidence = 1 / (1 + exp(-({:.3}·cos + {:.3}))); 0.5 at cosine {:.3}, 0.9 at {:.3}.\n",
            c.a,
            c.b,
            -c.b / c.a,
            ((0.9f64 / 0.1).ln() - c.b) / c.a
        );
    }
    s
}
