//! One module per group of subcommands; each parses nothing itself and only wires the library
//! crates together.

pub mod audit;
pub mod bench;
pub mod bench_backends;
pub mod bench_copies;
pub mod bench_index;
pub mod bench_scenes;
pub mod catalog;
pub mod characters;
pub mod checkpoint_files;
pub mod colour_layout;
pub mod copy_whitening;
pub mod embedding;
pub mod embedding_cache;
pub mod export;
pub mod generalisation;
pub mod ingest;
pub mod int8_export;
pub mod location;
pub mod model;
pub mod model_choice;
pub mod part_whitening;
pub mod reembed;
pub mod search;
pub mod serve;
pub mod video;
