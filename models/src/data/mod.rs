//! Labelled image collections: readers (folder-per-class, CSV manifest), splits, decoding
//! into an in-memory cache, and the batch loader with sampling, augmentation and mixup
//! running on worker threads ahead of the training step.

mod dataset;
mod loader;
mod unlabelled;

pub use dataset::{
    DataError, Dataset, LabelColumn, Sample, Split, EXEMPLAR_PREFIX, IMAGE_EXTENSIONS,
};
pub use loader::{decode_all, Batch, BatchLoader, DecodedSet, LoaderConfig};
pub use unlabelled::{unlabelled_images, Unlabelled};
