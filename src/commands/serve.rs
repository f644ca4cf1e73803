//! `animelens serve`: the service. Assembles the settings (defaults, `--config` TOML file,
//! `ANIMELENS_*` environment variables, then flags), loads the model, and runs `animelens-web`.

use super::model_choice::DEFAULT_MODEL;
use animelens_models::Classifier;
use animelens_web::{Service, Settings};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;

/// The committed sample gallery ingested into an empty catalogue.
pub const DEFAULT_GALLERY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/sample/holoen");

/// Arguments of `animelens serve`; each flag overrides the config file and the environment.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML settings file (keys: bind, data_dir, model, gallery, api_key, media_dir, max_upload_bytes, max_video_bytes,
    /// max_pixels, max_images_per_request, max_k, inference_workers, queue_capacity, max_batch,
    /// http_workers, feed_lambda, request_timeout_secs, max_connections, memory_budget_mib, graph_precision,
    /// backend, milvus_uri, milvus_collection, milvus_token; each
    /// also as ANIMELENS_<KEY>); the file itself also from ANIMELENS_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    bind: Option<String>,
    /// Data folder holding the catalogue (default animelens-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Checkpoint (NAME for NAME.safetensors + NAME.json; default the shipped demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Gallery ingested when the catalogue is empty ("" for none).
    #[arg(long)]
    gallery: Option<String>,
}

/// Runs the service until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let defaults = Settings::with_paths(
        PathBuf::from(DEFAULT_MODEL),
        Some(PathBuf::from(DEFAULT_GALLERY)),
    );
    let config = args
        .config
        .or_else(|| std::env::var_os("ANIMELENS_CONFIG").map(PathBuf::from));
    let mut settings = defaults.overridden(config.as_deref(), |k| std::env::var(k).ok())?;
    if let Some(bind) = args.bind {
        settings.bind = bind;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(model) = args.model {
        settings.model = model;
    }
    if let Some(gallery) = args.gallery {
        settings.gallery = Some(PathBuf::from(gallery)).filter(|g| !g.as_os_str().is_empty());
    }
    let classifier = Classifier::load(&settings.model)
        .with_context(|| {
            format!(
                "cannot load the model {}; pass another checkpoint with --model (or model = \"...\" \
                 in the config file, or ANIMELENS_MODEL)",
                settings.model.display()
            )
        })?
        .with_max_pixels(settings.max_pixels);
    tracing::info!(model = %settings.model.display(), fingerprint = %classifier.card().fingerprint, "model loaded");
    let service = Service::open(settings, Arc::new(classifier))?;
    service.run()?;
    Ok(())
}
