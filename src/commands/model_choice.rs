//! Which checkpoint a command uses when `--model` is not given, so that a new user can run every
//! command on the shipped defaults: the catalogue's own model when the catalogue recorded where it
//! was loaded from (and it still loads, with the same fingerprint), else the shipped demo model,
//! the one `serve` uses. A catalogue built with another model then gets an error that names its
//! fingerprint and asks for `--model`, never a silent mismatch.

use super::embedding::{load_model, model_tag};
use super::location::Location;
use animelens_index::Storage;
use animelens_models::{Classifier, Embedder};
use anyhow::{bail, Result};
use std::path::Path;

/// The shipped demo model (checkpoint path without extension).
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/holoen");

/// Whether a command may create the catalogue when `db` holds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create it with the chosen model (`index add`, `enroll`).
    Create,
    /// Fail with the "no catalogue" hint (searches, identification, calibration).
    Fail,
}

/// The catalogue at `db` (either backend) with the model its vectors come from: `--model` when
/// given, else the catalogue's recorded model, else the shipped demo model. Records the model's
/// path in the catalogue when `Missing::Create` (a writing command) and the catalogue does not
/// have it yet.
pub fn open_with_model(
    db: &Location,
    model: Option<&Path>,
    missing: Missing,
) -> Result<(Box<dyn Storage>, Classifier)> {
    let exists = db.exists();
    if !exists && missing == Missing::Fail {
        return Err(db.missing());
    }
    let explicit = model.or((!exists).then_some(Path::new(DEFAULT_MODEL)));
    if let Some(path) = explicit {
        // The catalogue checks the model's fingerprint (or takes it, when it is created).
        let classifier = load_model(path)?;
        let catalog = db.open(Some(model_tag(&classifier)))?;
        if missing == Missing::Create && catalog.model_source()?.is_none() {
            catalog.set_model_source(&absolute(path))?;
        }
        return Ok((catalog, classifier));
    }
    let catalog = db.open(None)?;
    let classifier = default_for(&*catalog, db)?;
    Ok((catalog, classifier))
}

/// The catalogue's recorded model when it loads with the catalogue's fingerprint, else the demo.
fn default_for(catalog: &dyn Storage, db: &Location) -> Result<Classifier> {
    if let Some(source) = catalog.model_source()? {
        match Classifier::load(Path::new(&source)) {
            Ok(c) if c.fingerprint() == catalog.model().fingerprint => return Ok(c),
            Ok(_) => tracing::warn!(
                "the catalogue's recorded model {source} has changed since the catalogue was built; \
                 trying the shipped demo model"
            ),
            Err(e) => tracing::warn!(
                "the catalogue's recorded model {source} does not load ({e}); trying the shipped demo model"
            ),
        }
    }
    let demo = load_model(Path::new(DEFAULT_MODEL))?;
    if demo.fingerprint() != catalog.model().fingerprint {
        bail!(
            "catalogue {db} was built with a model of fingerprint {} (dimension {}), not the shipped demo \
             model; pass that checkpoint with --model CKPT",
            catalog.model().fingerprint,
            catalog.model().dim
        );
    }
    Ok(demo)
}

/// `path` made absolute against the working folder, so that the record holds from anywhere (what
/// [`Storage::set_model_source`] is given).
pub fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
