//! `animelens bench copies`: the copy-detection benchmark. From a catalogue of pictures it edits a
//! seeded sample (the edits of `copies::edits`), takes pictures outside the catalogue as non-copies
//! (each edited too), and reports µAP, recall at precision 0.99 and 0.9, per-edit recall@1 and
//! queries/s for the copy descriptor next to two baselines computed by the same code: the
//! character embedding and a perceptual hash (DCT pHash, `image_hasher`).

use super::embedding::{load_model, progress_bar};
use super::model_choice::DEFAULT_MODEL;
use animelens_index::copy_verdict::{
    micro_average_precision, normalised_score, threshold_for_precision, BACKGROUND_RANK,
};
use animelens_index::dot;
use animelens_models::copies::edits::{standard_edits, Edit};
use animelens_models::copies::views::{catalogue_views, query_views, CATALOGUE_VIEWS};
use animelens_models::copies::{CopyDescriber, CopyDescriptorSpec};
use animelens_models::data::unlabelled_images;
use animelens_models::preprocess::{decode, DEFAULT_MAX_PIXELS};
use animelens_models::{Classifier, Embedder};
use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use image_hasher::{HashAlg, Hasher, HasherConfig, ImageHash};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `animelens bench copies` options.
#[derive(Args, Debug)]
pub struct CopyBenchArgs {
    /// Checkpoint (default: the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folders (searched recursively) or CSV manifests of catalogued pictures; the edited
    /// originals are drawn from all of them.
    #[arg(long, required = true, num_args = 1..)]
    catalogue: Vec<PathBuf>,
    /// Folders or manifests of pictures that are not in the catalogue (the non-copy queries,
    /// and the backgrounds pasted onto).
    #[arg(long, required = true, num_args = 1..)]
    non_copies: Vec<PathBuf>,
    /// Catalogued pictures that get edited (each by every edit).
    #[arg(long, default_value_t = 300)]
    originals: usize,
    /// Non-copy queries (default: as many as there are copy queries).
    #[arg(long)]
    non_copy_queries: Option<usize>,
    /// Use at most this many catalogued pictures (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Seed of the sample and of the edits.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Copy descriptor input side (another value than the model's measures an unwhitened
    /// variant).
    #[arg(long, default_value_t = CopyDescriptorSpec::default().input_size)]
    copy_size: usize,
    /// Inception block the copy descriptor pools (likewise).
    #[arg(long, default_value_t = CopyDescriptorSpec::default().layer)]
    copy_layer: String,
    /// Describe colour instead of luma (likewise).
    #[arg(long)]
    colour: bool,
    /// Measure the copy descriptor without the model's whitening.
    #[arg(long)]
    no_whitening: bool,
    /// Describe catalogued pictures whole only (no regions).
    #[arg(long)]
    whole_only: bool,
    /// Measure the copy descriptor only (skip the two baselines).
    #[arg(long)]
    no_baselines: bool,
    /// Write the copy descriptor's highest-scoring wrong answers here (PNG: each query beside the
    /// catalogued picture it was matched to).
    #[arg(long)]
    mistakes: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One query: an edited catalogued picture (with its original's index) or a non-copy.
struct Query {
    image: RgbImage,
    original: Option<usize>,
    /// The original's twins: other catalogued pictures that are near-duplicates of it (the
    /// datasets hold some drawings twice). Naming one is a right verdict ("a copy of something
    /// we hold") though not the strict answer.
    twins: Vec<usize>,
    edit: Edit,
}

/// Per query, the best catalogued picture, its raw similarity and the normalised score.
struct Answer {
    best: usize,
    raw: f32,
    normalised: f32,
}

/// One method's figures.
#[derive(Debug, Serialize)]
struct MethodReport {
    method: String,
    micro_ap: f32,
    micro_ap_raw: f32,
    recall_at_p99: f32,
    recall_at_p90: f32,
    threshold_p99: Option<f32>,
    /// µAP and recall at precision 0.99 when an answer naming a twin of the original counts.
    micro_ap_twins: f32,
    recall_at_p99_twins: f32,
    recall_at_1: BTreeMap<String, f32>,
    non_copy_best_median: f32,
    queries_per_s: f32,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    catalogue: usize,
    near_duplicates_dropped: usize,
    originals_with_twins: usize,
    copy_queries: usize,
    non_copy_queries: usize,
    spec: CopyDescriptorSpec,
    whitened: bool,
    regions: usize,
    methods: Vec<MethodReport>,
}

/// Runs the benchmark and prints a markdown report.
pub fn run(args: CopyBenchArgs) -> Result<()> {
    let model = load_model(args.model.as_deref().unwrap_or(Path::new(DEFAULT_MODEL)))?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut catalogue = read_all(&args.catalogue, "catalogue")?;
    if args.limit > 0 && catalogue.len() > args.limit {
        catalogue.shuffle(&mut rng);
        catalogue.truncate(args.limit);
    }
    let outside = read_all(&args.non_copies, "non-copies")?;
    let hashes = NearDuplicates::of(&catalogue);
    let (outside, near_duplicates) = hashes.drop_from(outside);
    eprintln!(
        "{near_duplicates} non-copy pictures dropped: a near-duplicate (pHash, mirrored or not, \
         within {NEAR_DUPLICATE_BITS} bits) of a catalogued picture"
    );
    let twins = hashes.twins();
    let queries = make_queries(&catalogue, &outside, &twins, &args, &mut rng);
    let mut originals: Vec<usize> = queries.iter().filter_map(|q| q.original).collect();
    originals.dedup();
    let originals_with_twins = originals.iter().filter(|&&o| !twins[o].is_empty()).count();
    let copies = queries.iter().filter(|q| q.original.is_some()).count();
    eprintln!(
        "{} catalogued pictures, {copies} copy queries, {} non-copy queries",
        catalogue.len(),
        queries.len() - copies
    );
    let spec = CopyDescriptorSpec {
        input_size: args.copy_size,
        layer: args.copy_layer.clone(),
        greyscale: !args.colour,
        ..CopyDescriptorSpec::default()
    };
    let describer = if &spec == model.copy_describer().spec() && !args.no_whitening {
        model.copy_describer().clone()
    } else {
        CopyDescriber::new(spec.clone(), model.architecture()).map_err(anyhow::Error::msg)?
    };
    let whitened = describer.is_whitened();
    let regions = if args.whole_only { 1 } else { CATALOGUE_VIEWS };
    let (copy_report, answers) =
        copy_descriptor(&model, &describer, &catalogue, &queries, regions)?;
    if let Some(path) = &args.mistakes {
        save_mistakes(path, &catalogue, &queries, &answers)?;
    }
    let mut methods = vec![copy_report];
    if !args.no_baselines {
        methods.push(character_embedding(&model, &catalogue, &queries)?);
        methods.push(perceptual_hash(&catalogue, &queries));
    }
    let report = Report {
        near_duplicates_dropped: near_duplicates,
        originals_with_twins,
        catalogue: catalogue.len(),
        copy_queries: copies,
        non_copy_queries: queries.len() - copies,
        spec,
        whitened,
        regions,
        methods,
    };
    println!("{}", markdown(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Decodes every picture of the sources, in order.
fn read_all(sources: &[PathBuf], what: &str) -> Result<Vec<RgbImage>> {
    let mut paths = Vec::new();
    for source in sources {
        let listed = unlabelled_images(source)
            .with_context(|| format!("cannot list the {what} pictures in {}", source.display()))?;
        paths.extend(listed.train);
        paths.extend(listed.held_out);
    }
    paths.sort();
    let bar = progress_bar(paths.len(), &format!("reading {what}"));
    let images: Vec<RgbImage> = paths
        .par_iter()
        .filter_map(|p| {
            bar.inc(1);
            let bytes = std::fs::read(p).ok()?;
            decode(&bytes, DEFAULT_MAX_PIXELS).ok()
        })
        .collect();
    bar.finish_and_clear();
    if images.is_empty() {
        bail!("no readable {what} pictures in {sources:?}");
    }
    Ok(images)
}

/// Non-copies this close (Hamming bits of a 256-bit pHash) to a catalogued picture, as they are
/// or mirrored, are taken for duplicates the datasets hold under two names and left out.
const NEAR_DUPLICATE_BITS: u32 = 24;

fn phasher() -> Hasher {
    HasherConfig::new()
        .hash_alg(HashAlg::Mean)
        .preproc_dct()
        .hash_size(8, 8)
        .to_hasher()
}

/// The catalogue's 256-bit pHashes, for the benchmark's independent near-duplicate checks (the
/// perceptual hash, not the descriptor under test).
struct NearDuplicates {
    hasher: Hasher,
    stored: Vec<ImageHash>,
    mirrored: Vec<ImageHash>,
}

impl NearDuplicates {
    fn of(catalogue: &[RgbImage]) -> Self {
        let hasher = HasherConfig::new()
            .hash_alg(HashAlg::Mean)
            .preproc_dct()
            .hash_size(16, 16)
            .to_hasher();
        let stored = catalogue.par_iter().map(|i| hasher.hash_image(i)).collect();
        let mirrored = catalogue
            .par_iter()
            .map(|i| hasher.hash_image(&image::imageops::flip_horizontal(i)))
            .collect();
        NearDuplicates {
            hasher,
            stored,
            mirrored,
        }
    }

    /// Whether a picture with hashes `plain` and `mirrored` is close to stored picture `s`.
    fn near(s: &ImageHash, plain: &ImageHash, mirrored: &ImageHash) -> bool {
        s.dist(plain) <= NEAR_DUPLICATE_BITS || s.dist(mirrored) <= NEAR_DUPLICATE_BITS
    }

    /// The pictures of `outside` that are not near-duplicates of catalogued ones, and how many
    /// were dropped.
    fn drop_from(&self, outside: Vec<RgbImage>) -> (Vec<RgbImage>, usize) {
        let before = outside.len();
        let kept: Vec<RgbImage> = outside
            .into_par_iter()
            .filter(|img| {
                let plain = self.hasher.hash_image(img);
                let mirrored = self
                    .hasher
                    .hash_image(&image::imageops::flip_horizontal(img));
                !self.stored.iter().any(|s| Self::near(s, &plain, &mirrored))
            })
            .collect();
        let dropped = before - kept.len();
        (kept, dropped)
    }

    /// Per catalogued picture, the other catalogued pictures that are near-duplicates of it
    /// (by the rule non-copies are dropped by).
    fn twins(&self) -> Vec<Vec<usize>> {
        let n = self.stored.len();
        (0..n)
            .into_par_iter()
            .map(|i| {
                (0..n)
                    .filter(|&j| {
                        j != i && Self::near(&self.stored[j], &self.stored[i], &self.mirrored[i])
                    })
                    .collect()
            })
            .collect()
    }
}

/// Every edit of a seeded sample of originals, then edited non-copies (any edit but a paste).
fn make_queries(
    catalogue: &[RgbImage],
    outside: &[RgbImage],
    twins: &[Vec<usize>],
    args: &CopyBenchArgs,
    rng: &mut StdRng,
) -> Vec<Query> {
    let edits = standard_edits();
    let mut order: Vec<usize> = (0..catalogue.len()).collect();
    order.shuffle(rng);
    let mut queries = Vec::new();
    for &original in order.iter().take(args.originals) {
        for edit in &edits {
            let background = &outside[rng.random_range(0..outside.len())];
            let image = edit.apply(&catalogue[original], Some(background), rng);
            queries.push(Query {
                image,
                original: Some(original),
                twins: twins[original].clone(),
                edit: *edit,
            });
        }
    }
    let wanted = args.non_copy_queries.unwrap_or(queries.len());
    let plain: Vec<Edit> = edits.into_iter().filter(Edit::is_targeted).collect();
    for i in 0..wanted {
        let edit = plain[rng.random_range(0..plain.len())];
        let image = edit.apply(&outside[i % outside.len()], None, rng);
        queries.push(Query {
            image,
            original: None,
            twins: Vec::new(),
            edit,
        });
    }
    queries
}

/// Scores of every catalogued picture for one query (higher is more similar), reduced to the
/// answer: the best, its score, and the score normalised by the background neighbour.
fn answer(scores: &[f32]) -> Answer {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let keep = (BACKGROUND_RANK + 1).min(order.len());
    order.select_nth_unstable_by(keep - 1, |&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(keep);
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let others: Vec<f32> = order[1..].iter().map(|&i| scores[i]).collect();
    Answer {
        best: order[0],
        raw: scores[order[0]],
        normalised: normalised_score(scores[order[0]], &others),
    }
}

fn copy_descriptor(
    model: &Classifier,
    describer: &CopyDescriber,
    catalogue: &[RgbImage],
    queries: &[Query],
    regions: usize,
) -> Result<(MethodReport, Vec<Answer>)> {
    let bar = progress_bar(catalogue.len(), "describing the catalogue");
    let mut stored = Vec::with_capacity(catalogue.len() * regions);
    for chunk in catalogue.chunks(16) {
        let views: Vec<RgbImage> = chunk
            .par_iter()
            .flat_map_iter(|img| catalogue_views(img).into_iter().take(regions))
            .collect();
        stored.extend(model.describe_copies(describer, &views)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let started = Instant::now();
    let bar = progress_bar(queries.len(), "copy descriptor queries");
    let mut answers = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(16) {
        let views: Vec<RgbImage> = chunk
            .par_iter()
            .flat_map_iter(|q| query_views(&q.image))
            .collect();
        let described = model.describe_copies(describer, &views)?;
        answers.par_extend(described.par_chunks(2).map(|pair| {
            let scores: Vec<f32> = stored
                .chunks(regions)
                .map(|item| {
                    item.iter()
                        .flat_map(|r| pair.iter().map(move |q| dot(r, q)))
                        .fold(f32::MIN, f32::max)
                })
                .collect();
            answer(&scores)
        }));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let qps = queries.len() as f32 / started.elapsed().as_secs_f32();
    Ok((report("copy descriptor", queries, &answers, qps), answers))
}

/// The 12 highest-scoring wrong answers as a strip: query left, its match right, one row each.
fn save_mistakes(
    path: &Path,
    catalogue: &[RgbImage],
    queries: &[Query],
    answers: &[Answer],
) -> Result<()> {
    const SIDE: u32 = 96;
    let mut wrong: Vec<(&Query, &Answer)> = queries
        .iter()
        .zip(answers)
        .filter(|(q, a)| {
            q.original != Some(a.best) && (q.original.is_none() || q.edit.is_targeted())
        })
        .collect();
    wrong.sort_by(|a, b| b.1.normalised.total_cmp(&a.1.normalised));
    wrong.truncate(12);
    let mut strip = RgbImage::from_pixel(
        2 * SIDE + 8,
        SIDE * wrong.len().max(1) as u32,
        image::Rgb([255, 255, 255]),
    );
    for (row, (q, a)) in wrong.iter().enumerate() {
        let y = row as i64 * SIDE as i64;
        for (x, img) in [(0, &q.image), (SIDE as i64 + 8, &catalogue[a.best])] {
            let fitted =
                image::imageops::resize(img, SIDE, SIDE, image::imageops::FilterType::Triangle);
            image::imageops::replace(&mut strip, &fitted, x, y);
        }
        eprintln!(
            "mistake {row}: {} query ({}), score {:.3} (raw {:.3})",
            if q.original.is_some() {
                "copy"
            } else {
                "non-copy"
            },
            q.edit.name(),
            a.normalised,
            a.raw
        );
    }
    strip
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn character_embedding(
    model: &Classifier,
    catalogue: &[RgbImage],
    queries: &[Query],
) -> Result<MethodReport> {
    let embed = |images: &[RgbImage], what: &str| -> Result<Vec<Vec<f32>>> {
        let bar = progress_bar(images.len(), what);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(32) {
            out.extend(
                model
                    .predict_images(chunk, 1, None)?
                    .into_iter()
                    .map(|p| p.embedding),
            );
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    };
    let stored = embed(catalogue, "embedding the catalogue")?;
    let started = Instant::now();
    let images: Vec<RgbImage> = queries.iter().map(|q| q.image.clone()).collect();
    let embedded = embed(&images, "character embedding queries")?;
    let answers: Vec<Answer> = embedded
        .par_iter()
        .map(|q| answer(&stored.iter().map(|s| dot(s, q)).collect::<Vec<_>>()))
        .collect();
    let qps = queries.len() as f32 / started.elapsed().as_secs_f32();
    Ok(report("character embedding", queries, &answers, qps))
}

fn perceptual_hash(catalogue: &[RgbImage], queries: &[Query]) -> MethodReport {
    let hasher = phasher();
    let hash = |img: &RgbImage| hasher.hash_image(img);
    let stored: Vec<ImageHash> = catalogue.par_iter().map(hash).collect();
    let started = Instant::now();
    let answers: Vec<Answer> = queries
        .par_iter()
        .map(|q| {
            let h = hash(&q.image);
            let bits = 64.0;
            let scores: Vec<f32> = stored
                .iter()
                .map(|s| 1.0 - s.dist(&h) as f32 / bits)
                .collect();
            answer(&scores)
        })
        .collect();
    let qps = queries.len() as f32 / started.elapsed().as_secs_f32();
    report("perceptual hash (pHash 64 bit)", queries, &answers, qps)
}

/// The figures of one method from its answers. The headline figures count the targeted edits'
/// copies and all non-copies; per-edit recall@1 lists every edit.
fn report(method: &str, queries: &[Query], answers: &[Answer], qps: f32) -> MethodReport {
    let headline: Vec<(&Query, &Answer)> = queries
        .iter()
        .zip(answers)
        .filter(|(q, _)| q.original.is_none() || q.edit.is_targeted())
        .collect();
    let positives = headline
        .iter()
        .filter(|(q, _)| q.original.is_some())
        .count();
    let is_right = |q: &Query, a: &Answer| q.original == Some(a.best);
    let names_twin = |q: &Query, a: &Answer| is_right(q, a) || q.twins.contains(&a.best);
    let predictions = |raw: bool, right: &dyn Fn(&Query, &Answer) -> bool| -> Vec<(f32, bool)> {
        headline
            .iter()
            .map(|(q, a)| (if raw { a.raw } else { a.normalised }, right(q, a)))
            .collect()
    };
    let at_precision = |scored: &[(f32, bool)], p: f32| {
        let correct: Vec<f32> = scored.iter().filter(|p| p.1).map(|p| p.0).collect();
        let wrong: Vec<f32> = scored.iter().filter(|p| !p.1).map(|p| p.0).collect();
        threshold_for_precision(&correct, &wrong, positives - correct.len(), p)
    };
    let scored = predictions(false, &is_right);
    let with_twins = predictions(false, &names_twin);
    let at = |p: f32| at_precision(&scored, p);
    let mut per_edit: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (q, a) in queries.iter().zip(answers) {
        if q.original.is_some() {
            let entry = per_edit.entry(q.edit.name()).or_default();
            entry.0 += usize::from(is_right(q, a));
            entry.1 += 1;
        }
    }
    let mut non_copy: Vec<f32> = queries
        .iter()
        .zip(answers)
        .filter(|(q, _)| q.original.is_none())
        .map(|(_, a)| a.raw)
        .collect();
    non_copy.sort_by(f32::total_cmp);
    MethodReport {
        method: method.into(),
        micro_ap: micro_average_precision(&scored, positives),
        micro_ap_raw: micro_average_precision(&predictions(true, &is_right), positives),
        micro_ap_twins: micro_average_precision(&with_twins, positives),
        recall_at_p99_twins: at_precision(&with_twins, 0.99).map_or(0.0, |v| v.recall),
        recall_at_p99: at(0.99).map_or(0.0, |v| v.recall),
        recall_at_p90: at(0.9).map_or(0.0, |v| v.recall),
        threshold_p99: at(0.99).map(|v| v.threshold),
        recall_at_1: per_edit
            .into_iter()
            .map(|(k, (hit, n))| (k, hit as f32 / n.max(1) as f32))
            .collect(),
        non_copy_best_median: non_copy.get(non_copy.len() / 2).copied().unwrap_or(0.0),
        queries_per_s: qps,
    }
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "catalogue {} pictures; {} copy queries, {} non-copy queries ({} near-duplicates of \
         catalogued pictures left out; {} originals have a catalogued twin); copy descriptor: \
         {:?}, whitened {}, {} views per catalogued picture\n\n",
        report.catalogue,
        report.copy_queries,
        report.non_copy_queries,
        report.near_duplicates_dropped,
        report.originals_with_twins,
        report.spec,
        report.whitened,
        report.regions
    );
    out += "| method | µAP | µAP (raw score) | recall @ P0.99 | recall @ P0.9 | µAP / recall @ P0.99, a twin counts | non-copy best (median) | queries/s |\n|---|---|---|---|---|---|---|---|\n";
    for m in &report.methods {
        out += &format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} / {:.3} | {:.3} | {:.0} |\n",
            m.method,
            m.micro_ap,
            m.micro_ap_raw,
            m.recall_at_p99,
            m.recall_at_p90,
            m.micro_ap_twins,
            m.recall_at_p99_twins,
            m.non_copy_best_median,
            m.queries_per_s
        );
    }
    let edits: Vec<&String> = report.methods[0].recall_at_1.keys().collect();
    out += "\nrecall@1 per edit\n\n| method |";
    for e in &edits {
        out += &format!(" {e} |");
    }
    out += "\n|---|";
    out += &"---|".repeat(edits.len());
    out += "\n";
    for m in &report.methods {
        out += &format!("| {} |", m.method);
        for e in &edits {
            out += &format!(" {:.2} |", m.recall_at_1[*e]);
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn picture(seed: u32) -> RgbImage {
        RgbImage::from_fn(64, 64, |x, y| {
            let v = ((x * seed + y * (seed + 3)) % 97) as u8;
            Rgb([v, v.wrapping_mul(2), 255 - v])
        })
    }

    #[test]
    fn twins_are_the_near_duplicates_and_an_answer_naming_one_counts_only_where_they_count() {
        let a = picture(5);
        let mut a_again = a.clone();
        a_again.put_pixel(3, 3, Rgb([0, 0, 0]));
        let b = picture(11);
        let hashes = NearDuplicates::of(&[a.clone(), a_again, b.clone()]);
        assert_eq!(hashes.twins(), vec![vec![1], vec![0], vec![]]);
        let checkers = RgbImage::from_fn(64, 64, |x, y| {
            Rgb([if (x / 16 + y / 16) % 2 == 0 { 255 } else { 0 }; 3])
        });
        let (kept, dropped) = hashes.drop_from(vec![a.clone(), b.clone(), checkers]);
        assert_eq!((kept.len(), dropped), (1, 2));

        // One copy of picture 0 answered with its twin 1, one non-copy scored below it.
        let queries = [
            Query {
                image: a,
                original: Some(0),
                twins: vec![1],
                edit: Edit::Mirror,
            },
            Query {
                image: b,
                original: None,
                twins: Vec::new(),
                edit: Edit::Mirror,
            },
        ];
        let answers = [
            Answer {
                best: 1,
                raw: 0.9,
                normalised: 0.5,
            },
            Answer {
                best: 2,
                raw: 0.4,
                normalised: 0.1,
            },
        ];
        let strict_and_lenient = report("m", &queries, &answers, 1.0);
        assert_eq!(strict_and_lenient.recall_at_p99, 0.0);
        assert_eq!(strict_and_lenient.recall_at_p99_twins, 1.0);
        assert_eq!(strict_and_lenient.micro_ap_twins, 1.0);
        assert_eq!(strict_and_lenient.recall_at_1["mirror"], 0.0);
    }
}
