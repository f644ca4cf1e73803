//! Opens the storage the settings name (`backend`): the embedded sled + hnsw_rs catalogue in the
//! data folder, or the Milvus backend (vectors on the Milvus server at `milvus_uri`, records
//! beside them in the data folder). The service receives the opened storage and never asks which
//! one it is.

use crate::config::{Backend, Settings};
use animelens_index::{Catalog, CatalogError, ModelTag, OpenOptions, Storage};
use std::sync::Arc;

/// Opens (creating if needed) the catalogue of `model`'s embeddings in the configured backend.
pub fn open_storage(
    settings: &Settings,
    model: ModelTag,
) -> Result<Arc<dyn Storage>, CatalogError> {
    let mut options = OpenOptions::new(model);
    options.hnsw.precision = Some(settings.graph_precision);
    match settings.backend {
        Backend::Embedded => Ok(Arc::new(Catalog::open(settings.catalog_dir(), options)?)),
        Backend::Milvus => open_milvus(settings, options),
    }
}

#[cfg(feature = "milvus")]
fn open_milvus(
    settings: &Settings,
    options: OpenOptions,
) -> Result<Arc<dyn Storage>, CatalogError> {
    let config = animelens_index::MilvusConfig {
        uri: settings.milvus_uri.clone(),
        collection: settings.milvus_collection.clone(),
        token: settings.milvus_token.clone(),
    };
    Ok(Arc::new(animelens_index::MilvusStorage::open(
        settings.catalog_dir(),
        &config,
        options.model,
        &options.hnsw,
    )?))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(_: &Settings, _: OpenOptions) -> Result<Arc<dyn Storage>, CatalogError> {
    Err(CatalogError::InvalidArgument {
        what: "backend = \"milvus\", but this animelens was built without the Milvus client".into(),
        fix: "build it with `--features milvus`, or set backend = \"embedded\"".into(),
    })
}
