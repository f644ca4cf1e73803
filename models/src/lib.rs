//! AnimeLens models: the network (classifier + embedder) built from an architecture table
//! (GoogLeNet today), its CPU kernels,
//! checkpoints, preprocessing, data readers, augmentation, training and evaluation.
//!
//! This crate knows nothing of sled, HNSW or HTTP; the rest of AnimeLens sees it through
//! [`Embedder`] and [`Prediction`].

pub mod activation_codes;
pub mod architecture;
mod atomic_file;
pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod copies;
pub mod data;
pub mod embedder;
pub mod folded;
pub mod fusion;
pub mod generalisation;
pub mod head;
pub mod instance_views;
pub mod layers;
pub mod loss;
pub mod metric_loss;
pub mod metrics;
pub mod network;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod optimiser;
pub mod palette;
pub mod plots;
pub mod preprocess;
pub mod prune;
pub mod quantise;
pub mod schedule;
pub mod train;
mod unit_vector;
pub mod whitening;

pub use architecture::{Architecture, GOOGLENET};
pub use classifier::Classifier;
pub use embedder::{CopyViews, EmbedError, Embedder, HeadPrediction, LabelScore, Prediction};
pub use network::{HeadSpec, Network, Output};
