//! Unlabelled pictures (a folder of images, searched recursively, or a CSV manifest's `path`
//! column) for the instance term, with a fixed tenth held out of training by a hash of each file
//! name, so that evaluation has pictures of characters the model never saw, not even unlabelled.

use super::dataset::{DataError, IMAGE_EXTENSIONS};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The pictures of an unlabelled collection, split into training and held-out parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unlabelled {
    /// Used by the instance term.
    pub train: Vec<PathBuf>,
    /// One in ten, never trained on (evaluation's unknown characters).
    pub held_out: Vec<PathBuf>,
}

fn is_held_out(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Sha256::digest(name.as_bytes())[0] % 10 == 0
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn from_manifest(manifest: &Path) -> Result<Vec<PathBuf>, DataError> {
    let csv_err = |e: csv::Error| DataError::Csv {
        manifest: manifest.into(),
        message: e.to_string(),
    };
    let mut reader = csv::Reader::from_path(manifest).map_err(csv_err)?;
    let header = reader.headers().map_err(csv_err)?.clone();
    let column =
        header
            .iter()
            .position(|h| h == "path")
            .ok_or_else(|| DataError::MissingColumn {
                manifest: manifest.into(),
                column: "path".into(),
                available: header.iter().collect::<Vec<_>>().join(", "),
            })?;
    let base = manifest.parent().unwrap_or(Path::new("."));
    reader
        .records()
        .map(|r| Ok(base.join(r.map_err(csv_err)?.get(column).unwrap_or_default())))
        .collect()
}

/// Lists the pictures under `source` (a folder or a `.csv` manifest), sorted, and splits them.
pub fn unlabelled_images(source: &Path) -> Result<Unlabelled, DataError> {
    let mut paths = Vec::new();
    if source
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        paths = from_manifest(source)?;
    } else {
        walk(source, &mut paths)?;
    }
    if paths.is_empty() {
        return Err(DataError::Empty(source.into()));
    }
    paths.sort();
    let (held_out, train) = paths.into_iter().partition(|p| is_held_out(p));
    Ok(Unlabelled { train, held_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_is_held_out_by_file_name_wherever_the_folder_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for i in 0..200 {
            let sub = if i % 2 == 0 { "sub/" } else { "" };
            std::fs::write(dir.path().join(format!("{sub}{i}.jpg")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let u = unlabelled_images(dir.path()).unwrap();
        assert_eq!(u.train.len() + u.held_out.len(), 200);
        assert!((8..=35).contains(&u.held_out.len()), "{}", u.held_out.len());
        assert!(u.held_out.iter().all(|p| is_held_out(p)));
        let names = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.file_name().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let manifest = dir.path().join("m.csv");
        let rows: String = (0..200)
            .map(|i| format!("{}{i}.jpg\n", if i % 2 == 0 { "sub/" } else { "" }))
            .collect();
        std::fs::write(&manifest, format!("path\n{rows}")).unwrap();
        let m = unlabelled_images(&manifest).unwrap();
        let mut a = names(&m.held_out);
        let mut b = names(&u.held_out);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
