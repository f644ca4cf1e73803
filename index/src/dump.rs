//! Saving and reloading the HNSW graph so that opening a large catalogue does not rebuild it.
//!
//! Layout inside the catalogue folder: `hnsw/g<generation>.hnsw.{graph,data}` (hnsw_rs `file_dump`)
//! and `hnsw/manifest.json`, written last and atomically (temp file + rename), naming the sled
//! generation, model fingerprint, dimension, graph precision, point count and CRC-32 of both files. A dump is used
//! only when all of these match the store; otherwise it is ignored (with a log line) and the graph
//! is rebuilt. The CRC check runs before hnsw_rs reads the files because hnsw_rs asserts (panics) on
//! malformed input; the load also runs under `catch_unwind` as a second line of defence.
//!
//! Ownership: `HnswIo::load_hnsw` returns an `Hnsw<'b>` that borrows the `HnswIo` loader (for its
//! optional memory map). We never use the memory map, so the loader owns nothing large; we leak it
//! (`Box::leak`, a few hundred bytes per reload, one reload per open) to obtain an `Hnsw<'static>`
//! that can live in the catalogue's `RwLock` without a self-referential struct.

use crate::ann::{Ann, GraphPrecision};
use crate::error::{CatalogError, Result};
use crate::int8_points::ScaledInt8Dot;
use hnsw_rs::api::AnnT;
use hnsw_rs::prelude::{DistDot, HnswIo};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const MANIFEST: &str = "manifest.json";

/// What a dump must reflect to be usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DumpTag {
    /// sled generation the graph reflects.
    pub(crate) generation: u64,
    /// Model fingerprint of the vectors.
    pub(crate) fingerprint: String,
    /// Embedding dimension.
    pub(crate) dim: usize,
    /// What the graph stores of each vector (manifests written before int8 graphs lack it: f32).
    #[serde(default)]
    pub(crate) precision: GraphPrecision,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileCheck {
    len: u64,
    crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    tag: DumpTag,
    points: usize,
    basename: String,
    graph: FileCheck,
    data: FileCheck,
}

/// The dump folder of catalogue folder `dir`.
pub(crate) fn dump_dir(dir: &Path) -> PathBuf {
    dir.join("hnsw")
}

fn files(dir: &Path, basename: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{basename}.hnsw.graph")),
        dir.join(format!("{basename}.hnsw.data")),
    )
}

fn check(path: &Path) -> std::io::Result<FileCheck> {
    let bytes = fs::read(path)?;
    Ok(FileCheck {
        len: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    })
}

/// Writes `ann` as the dump of catalogue folder `dir`, tagged with `tag`, and deletes older dumps.
pub(crate) fn save(ann: &Ann, dir: &Path, tag: &DumpTag) -> Result<()> {
    let out = dump_dir(dir);
    let fail = |reason: String| CatalogError::Dump {
        path: out.clone(),
        reason,
    };
    fs::create_dir_all(&out).map_err(|e| fail(e.to_string()))?;
    let wanted = format!("g{}", tag.generation);
    let (g, d) = files(&out, &wanted);
    for stale in [&g, &d] {
        let _ = fs::remove_file(stale);
    }
    let dumped = catch_unwind(AssertUnwindSafe(|| match ann {
        Ann::F32(h) => h.file_dump(&out, &wanted),
        Ann::Int8(h) => h.file_dump(&out, &wanted),
    }))
    .map_err(|_| fail("hnsw_rs panicked while writing the dump".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let (g, d) = files(&out, &dumped);
    let sync = |p: &Path| fs::File::open(p).and_then(|f| f.sync_all());
    sync(&g).and(sync(&d)).map_err(|e| fail(e.to_string()))?;
    let manifest = Manifest {
        tag: tag.clone(),
        points: ann.len(),
        basename: dumped.clone(),
        graph: check(&g).map_err(|e| fail(e.to_string()))?,
        data: check(&d).map_err(|e| fail(e.to_string()))?,
    };
    let tmp = out.join(format!("{MANIFEST}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).expect("manifest serialises"))?;
        f.sync_all()?;
        fs::rename(&tmp, out.join(MANIFEST))?;
        fs::File::open(&out)?.sync_all()
    };
    write().map_err(|e| fail(e.to_string()))?;
    for entry in fs::read_dir(&out)
        .map_err(|e| fail(e.to_string()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST && !name.starts_with(&format!("{dumped}.hnsw.")) {
            let _ = fs::remove_file(entry.path());
        }
    }
    tracing::debug!(dir = %out.display(), generation = tag.generation, "saved HNSW dump");
    Ok(())
}

/// What the saved graph of catalogue folder `dir` stores of each vector, current or not; `None`
/// when there is no readable manifest.
pub(crate) fn saved_precision(dir: &Path) -> Option<GraphPrecision> {
    read_manifest(&dump_dir(dir))?.ok().map(|m| m.tag.precision)
}

/// The manifest in dump folder `out`: `None` when there is none, an error when it is damaged.
fn read_manifest(out: &Path) -> Option<serde_json::Result<Manifest>> {
    let bytes = fs::read(out.join(MANIFEST)).ok()?;
    Some(serde_json::from_slice(&bytes))
}

/// Reloads the dump of catalogue folder `dir` if it reflects exactly `tag`; otherwise logs why it
/// is not usable and returns `None` (the caller rebuilds).
pub(crate) fn load(dir: &Path, tag: &DumpTag) -> Option<Ann> {
    let out = dump_dir(dir);
    let manifest = match read_manifest(&out) {
        None => {
            tracing::info!(dir = %out.display(), "no saved HNSW index; building it from the store");
            return None;
        }
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            tracing::warn!(dir = %out.display(), "damaged HNSW manifest ({e}); rebuilding the index");
            return None;
        }
    };
    if &manifest.tag != tag {
        tracing::info!(
            dir = %out.display(),
            dump_generation = manifest.tag.generation,
            store_generation = tag.generation,
            "saved HNSW index is stale; rebuilding it from the store"
        );
        return None;
    }
    let (g, d) = files(&out, &manifest.basename);
    let intact = |p: &Path, want: &FileCheck| {
        check(p).is_ok_and(|c| c.len == want.len && c.crc32 == want.crc32)
    };
    if !intact(&g, &manifest.graph) || !intact(&d, &manifest.data) {
        tracing::warn!(dir = %out.display(), "saved HNSW index is damaged (checksum mismatch); rebuilding it");
        return None;
    }
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&out, &manifest.basename)));
    let loaded = catch_unwind(AssertUnwindSafe(move || match tag.precision {
        GraphPrecision::F32 => { loader }.load_hnsw::<f32, DistDot>().map(Ann::F32),
        GraphPrecision::Int8 => { loader }.load_hnsw::<i8, ScaledInt8Dot>().map(Ann::Int8),
    }));
    match loaded {
        Ok(Ok(ann)) if ann.len() == manifest.points => Some(ann),
        Ok(Ok(_)) => {
            tracing::warn!(dir = %out.display(), "saved HNSW index has the wrong point count; rebuilding it");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %out.display(), "could not load the saved HNSW index ({e}); rebuilding it");
            None
        }
        Err(_) => {
            tracing::warn!(dir = %out.display(), "hnsw_rs rejected the saved HNSW index; rebuilding it");
            None
        }
    }
}
