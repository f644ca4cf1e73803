//! One module per group of subcommands; each parses nothing itself and only wires the library
//! crates together.

pub mod bench;
pub mod catalog;
pub mod model;
