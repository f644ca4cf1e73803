//! An append-only cache of embeddings on disk, one file per embedder fingerprint, so that
//! benchmark reruns do not recompute thousands of embeddings and a killed run resumes where it
//! stopped.
//!
//! File `<dir>/<fingerprint>.emb`: records of `u32 LE path length, path (UTF-8), u32 LE dimension,
//! dimension × f32 LE`. A truncated last record (a run killed mid-write) is ignored.

use super::embedding::{embed_batch, BATCH};
use animelens_models::Embedder;
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Embeddings of one embedder, keyed by image path.
pub struct EmbeddingCache {
    path: PathBuf,
    known: HashMap<PathBuf, Vec<f32>>,
}

/// Parses cache records, stopping at the first incomplete one.
fn parse(bytes: &[u8]) -> HashMap<PathBuf, Vec<f32>> {
    let mut known = HashMap::new();
    let mut at = 0usize;
    let mut take = |n: usize| {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let mut next = || -> Option<(PathBuf, Vec<f32>)> {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let path = PathBuf::from(std::str::from_utf8(take(len)?).ok()?);
        let dim = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let v = take(dim * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Some((path, v))
    };
    while let Some((p, v)) = next() {
        known.insert(p, v);
    }
    known
}

impl EmbeddingCache {
    /// Opens (or starts) the cache of embedder `fingerprint` in folder `dir`.
    pub fn open(dir: &Path, fingerprint: &str) -> Result<EmbeddingCache> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the embedding cache folder {}", dir.display())
        })?;
        let path = dir.join(format!("{fingerprint}.emb"));
        let known = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes),
            Err(_) => HashMap::new(),
        };
        Ok(EmbeddingCache { path, known })
    }

    /// Appends records to the cache file.
    fn append(&mut self, records: Vec<(PathBuf, Vec<f32>)>) -> Result<()> {
        let mut out = Vec::new();
        for (p, v) in &records {
            let name = p.to_string_lossy();
            out.extend((name.len() as u32).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend((v.len() as u32).to_le_bytes());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&out))
            .with_context(|| {
                format!(
                    "cannot write the embedding cache {}: check free space, or delete the file",
                    self.path.display()
                )
            })?;
        self.known.extend(records);
        Ok(())
    }

    /// Embeddings of `paths` (in order), computing and caching the missing ones in batches;
    /// unreadable images give the reason. `bar` advances per path.
    pub fn embed_all(
        &mut self,
        embedder: &dyn Embedder,
        paths: &[PathBuf],
        bar: &ProgressBar,
    ) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
        let missing: Vec<PathBuf> = paths
            .iter()
            .filter(|p| !self.known.contains_key(*p))
            .cloned()
            .collect();
        bar.inc((paths.len() - missing.len()) as u64);
        let mut failures: HashMap<PathBuf, String> = HashMap::new();
        for chunk in missing.chunks(BATCH) {
            let mut records = Vec::new();
            for (path, result) in chunk.iter().zip(embed_batch(embedder, chunk)) {
                match result {
                    Ok(v) => records.push((path.clone(), v)),
                    Err(reason) => {
                        failures.insert(path.clone(), reason);
                    }
                }
            }
            self.append(records)?;
            bar.inc(chunk.len() as u64);
        }
        Ok(paths
            .iter()
            .map(|p| match self.known.get(p) {
                Some(v) => Ok(v.clone()),
                None => Err(failures.remove(p).unwrap_or_else(|| "not embedded".into())),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::path::PathBuf;

    #[test]
    fn parse_skips_a_truncated_record() {
        let mut bytes = Vec::new();
        for (name, v) in [("a.jpg", [1.0f32, 2.0]), ("b.jpg", [3.0, 4.0])] {
            bytes.extend((name.len() as u32).to_le_bytes());
            bytes.extend(name.as_bytes());
            bytes.extend(2u32.to_le_bytes());
            v.iter().for_each(|x| bytes.extend(x.to_le_bytes()));
        }
        bytes.truncate(bytes.len() - 3);
        let known = parse(&bytes);
        assert_eq!(known.len(), 1);
        assert_eq!(known[&PathBuf::from("a.jpg")], vec![1.0, 2.0]);
    }
}
