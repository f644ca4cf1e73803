//! Copy detection: "is this upload one of our catalogued pictures, perhaps edited?" — a question
//! the character embedding cannot answer, since it is built to call every drawing of a character
//! the same. This module holds what the catalogue, the `audit` command and `bench copies` share:
//! border trimming, the views a picture is described by, the descriptor itself, the seeded edit
//! generator the benchmark and the calibration use. Turning scores into a verdict is the
//! catalogue's job (`animelens_index::copy_verdict`).

pub mod borders;
pub mod descriptor;
pub mod edits;
pub mod hint;
pub mod views;

pub use descriptor::{CopyDescriber, CopyDescriptorSpec};

/// File kind of the copy descriptor's whitening beside a checkpoint
/// ([`crate::whitening::Whitening::path_for`]: `NAME.copy.safetensors`).
pub const COPY_WHITENING: &str = "copy";
