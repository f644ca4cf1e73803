//! `animelens learn-copy-whitening`: learns the copy descriptor's whitening for a checkpoint from
//! background pictures (see `animelens_models::whitening`) and writes it beside the
//! checkpoint, where `Classifier::load` finds it. The background should not be the pictures a
//! benchmark then tests on (the shipped one is learned on malportraits, the benchmark runs on
//! holoen).

use super::embedding::{load_model, progress_bar};
use animelens_index::dot;
use animelens_models::copies::edits::{standard_edits, Edit};
use animelens_models::copies::views::{catalogue_views, query_views, CATALOGUE_VIEWS};
use animelens_models::data::unlabelled_images;
use animelens_models::preprocess::{decode, DEFAULT_MAX_PIXELS};
use animelens_models::whitening::Whitening;
use anyhow::{bail, Context, Result};
use clap::Args;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;

/// `animelens learn-copy-whitening` options.
#[derive(Args, Debug)]
pub struct LearnWhiteningArgs {
    /// Checkpoint whose copy descriptor is whitened; the whitening is written beside it.
    #[arg(long)]
    model: PathBuf,
    /// Folders (searched recursively) or CSV manifests of background pictures.
    #[arg(long, required = true, num_args = 1..)]
    background: Vec<PathBuf>,
    /// Background pictures used (a seeded sample).
    #[arg(long, default_value_t = 3000)]
    pictures: usize,
    /// Output dimension.
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Seed of the sample and the edits.
    #[arg(long, default_value_t = 11)]
    seed: u64,
}

/// Runs `animelens learn-copy-whitening`.
pub fn run(args: LearnWhiteningArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let describer = model.copy_describer().clone().without_whitening();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut paths = Vec::new();
    for source in &args.background {
        let listed = unlabelled_images(source)
            .with_context(|| format!("no background pictures in {}", source.display()))?;
        paths.extend(listed.train);
        paths.extend(listed.held_out);
    }
    paths.sort();
    paths.shuffle(&mut rng);
    paths.truncate(args.pictures);
    let pictures: Vec<RgbImage> = paths
        .par_iter()
        .filter_map(|p| decode(&std::fs::read(p).ok()?, DEFAULT_MAX_PIXELS).ok())
        .collect();
    if pictures.len() < args.dim {
        bail!(
            "{} readable background pictures are too few for {} dimensions",
            pictures.len(),
            args.dim
        );
    }
    let edits: Vec<Edit> = standard_edits()
        .into_iter()
        .filter(Edit::is_targeted)
        .collect();
    let bar = progress_bar(
        pictures.len(),
        "describing background pictures and their copies",
    );
    let (mut pairs, mut unrelated) = (Vec::new(), Vec::new());
    for chunk in pictures.chunks(16) {
        let mut views = Vec::new();
        for picture in chunk {
            let edit = edits.choose(&mut rng).expect("there are edits");
            let copy = edit.apply(picture, None, &mut rng);
            views.extend(catalogue_views(picture));
            views.extend(query_views(&copy));
        }
        let described = model.describe_copies(&describer, &views)?;
        for picture in described.chunks(CATALOGUE_VIEWS + 2) {
            let (stored, copy) = picture.split_at(CATALOGUE_VIEWS);
            unrelated.push(stored[0].clone());
            // The copy's partner is the stored view it matches best (a region for a crop).
            let best = stored
                .iter()
                .flat_map(|s| copy.iter().map(move |c| (s, c, dot(s, c))))
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .expect("views exist");
            pairs.push((best.0.clone(), best.1.clone()));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let whitening = Whitening::learn_from_pairs(&pairs, &unrelated, args.dim)?;
    let path = Whitening::path_for(&args.model, animelens_models::copies::COPY_WHITENING);
    whitening.save(&path)?;
    println!(
        "wrote {} ({} → {} dimensions, learned on {} pictures and their edited copies)",
        path.display(),
        whitening.input_dim(),
        whitening.dim,
        pictures.len()
    );
    Ok(())
}
