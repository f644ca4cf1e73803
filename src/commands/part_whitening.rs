//! `animelens learn-whitening`: learns the PCA whitenings of the character vector's generic parts
//! (the pooled block and the palette, `animelens_models::fusion`) from pictures of the domain a
//! catalogue serves, writes them beside the checkpoint and marks the parts whitened in its card.
//! No labels are used: the pictures are the training split of `--data` without the characters
//! the model was trained without (so that the unseen-character protocols stay honest), plus the
//! training nine-tenths of any `--background` folders (e.g. a platform's own gallery).

use super::model::DataArgs;
use animelens_models::checkpoint::{self, write_card};
use animelens_models::data::{decode_all, unlabelled_images, Sample, Split};
use animelens_models::fusion::{BlockFusion, Fusion, BLOCK_WHITENING, PALETTE_WHITENING};
use animelens_models::metrics::run_set;
use animelens_models::palette::{palette as palette_of, PaletteFusion};
use animelens_models::whitening::Whitening;
use anyhow::{bail, Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// `animelens learn-whitening` options.
#[derive(Args, Debug)]
pub struct LearnPartWhiteningArgs {
    /// Checkpoint whose fused parts are whitened; the whitenings are written beside it and its
    /// card marks the parts whitened.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Characters whose pictures are left out (default: the card's held-out characters).
    #[arg(long, value_delimiter = ',')]
    without: Vec<String>,
    /// Unlabelled folders or CSV manifests of more pictures of the domain (their held-out tenth
    /// is left out, as in training).
    #[arg(long, value_delimiter = ',')]
    background: Vec<PathBuf>,
    /// Parts to whiten: block, palette.
    #[arg(long, value_delimiter = ',', default_value = "block,palette")]
    parts: Vec<String>,
    /// Shrinkage of the whitening (in units of the mean eigenvalue; larger stays closer to the
    /// raw cosine).
    #[arg(long, default_value_t = 1.0)]
    shrinkage: f64,
    /// Pictures used at most (a seeded sample).
    #[arg(long, default_value_t = 8000)]
    pictures: usize,
    /// Seed of the sample.
    #[arg(long, default_value_t = 5)]
    seed: u64,
}

/// Runs `animelens learn-whitening`.
pub fn run(args: LearnPartWhiteningArgs) -> Result<()> {
    let model = checkpoint::load(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let fusion = model.card.fusion(model.net.architecture())?;
    let (block, palette) = (
        args.parts.iter().any(|p| p == "block"),
        args.parts.iter().any(|p| p == "palette"),
    );
    if let Some(other) = args
        .parts
        .iter()
        .find(|p| !["block", "palette"].contains(&p.as_str()))
    {
        bail!("unknown part '{other}': the parts that can be whitened are block and palette");
    }
    if block && fusion.block.is_none() {
        bail!("the model card fuses no block: add one with `animelens eval --block-weight 0.2 --unseen --calibrate`, or pass --parts palette");
    }
    if palette && fusion.palette.is_none() {
        bail!("the model card fuses no palette: add it with `animelens eval --palette-weight 0.5 --unseen --calibrate`, or pass --parts block");
    }

    let without = if args.without.is_empty() {
        model.card.held_out()
    } else {
        args.without.clone()
    };
    let dataset = args.data.load()?;
    let names = &dataset.classes[0];
    let mut samples: Vec<Sample> = dataset
        .samples
        .iter()
        .filter(|s| s.split == Split::Train && !without.contains(&names[s.labels[0] as usize]))
        .cloned()
        .collect();
    for source in &args.background {
        let listed = unlabelled_images(source)
            .with_context(|| format!("no background pictures in {}", source.display()))?;
        samples.extend(listed.train.into_iter().map(|path| Sample {
            path,
            labels: vec![0],
            split: Split::Train,
        }));
    }
    samples.shuffle(&mut StdRng::seed_from_u64(args.seed));
    samples.truncate(args.pictures);
    let pre = &model.card.preprocessing;
    let (set, failures) = decode_all(&samples, pre.input_size, true);
    for (path, reason) in &failures {
        tracing::warn!("skipping unreadable image {}: {reason}", path.display());
    }
    if set.images.len() < 2 {
        bail!(
            "{} readable pictures are too few to learn a whitening",
            set.images.len()
        );
    }
    let set = Arc::new(set);
    // Only the parts asked for are computed: the palette alone needs no forward pass.
    let blocks: Vec<Vec<f32>> = if block {
        tracing::info!("describing {} pictures", set.images.len());
        let outputs = run_set(
            &model.serving()?,
            &set,
            pre,
            32,
            fusion.tap().map(|t| t.blocks),
        )?;
        outputs
            .blocks
            .into_par_iter()
            .map(Fusion::block_part)
            .collect()
    } else {
        Vec::new()
    };
    let palettes: Vec<Vec<f32>> = if palette {
        set.images.par_iter().map(palette_of).collect()
    } else {
        Vec::new()
    };

    let mut card = model.card.clone();
    let learn = |rows: &[Vec<f32>], kind: &str| -> Result<()> {
        let whitening = Whitening::learn_principal(rows, args.shrinkage)?;
        let path = Whitening::path_for(&args.model, kind);
        whitening.save(&path)?;
        println!(
            "wrote {} ({}-d, learned on {} pictures)",
            path.display(),
            whitening.dim,
            rows.len()
        );
        Ok(())
    };
    if block {
        learn(&blocks, BLOCK_WHITENING)?;
        card.block = card.block.map(|b| BlockFusion {
            whitened: true,
            ..b
        });
    }
    if palette {
        learn(&palettes, PALETTE_WHITENING)?;
        card.palette = card.palette.map(|p| PaletteFusion {
            whitened: true,
            ..p
        });
    }
    if card.similarity.take().is_some() {
        println!(
            "the card's confidence calibration was fitted on other vectors and is removed: fit \
             it again with `animelens eval --unseen --calibrate`"
        );
    }
    write_card(&args.model, &card)?;
    // The tag as the model now loads: every whitened part, this run's and any earlier one's.
    let tag = card
        .fusion(model.net.architecture())?
        .with_whitenings(&args.model)?
        .fingerprint_tag();
    println!("the card now marks {} whitened (vectors tagged {tag}); re-index catalogues built with this model (`animelens index rebuild --reembed`)", args.parts.join(" and "));
    Ok(())
}
