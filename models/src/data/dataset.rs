//! Reading a labelled dataset: `root/<label>/*.jpg` folders (optionally under `train/`, `val/`,
//! `test/`) or a CSV manifest with a path column, label columns and an optional split column.
//! Without a given split, each class is split 8:1:1 deterministically (by a hash of the path).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training data.
    Train,
    /// Validation data (model selection, early stopping).
    Val,
    /// Held-out test data.
    Test,
}

impl Split {
    /// The split's folder and tag name: `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }

    /// Parses `train`, `val`/`valid`/`validation`, `test`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Self::Train),
            "val" | "valid" | "validation" => Some(Self::Val),
            "test" | "testing" => Some(Self::Test),
            _ => None,
        }
    }
}

/// One image with a class index per label level.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Image file.
    pub path: PathBuf,
    /// Class index per level (same order as [`Dataset::levels`]).
    pub labels: Vec<u32>,
    /// Split the sample belongs to.
    pub split: Split,
}

/// A label level read from a manifest column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelColumn {
    /// Level name (head name), e.g. `character`.
    pub level: String,
    /// CSV column holding it, e.g. `name`.
    pub column: String,
}

impl LabelColumn {
    /// Parses `level=column`, or `column` alone (level named after the column).
    pub fn parse(spec: &str) -> Self {
        match spec.split_once('=') {
            Some((level, column)) => Self {
                level: level.trim().into(),
                column: column.trim().into(),
            },
            None => Self {
                level: spec.trim().into(),
                column: spec.trim().into(),
            },
        }
    }
}

/// What is wrong with a dataset, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset path does not exist or cannot be read.
    #[error("cannot read dataset at {path}: {source}. Check the path")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A manifest column named on the command line is absent.
    #[error("manifest {manifest} has no column '{column}' (columns: {available}). Pass an existing column name")]
    MissingColumn {
        /// Manifest path.
        manifest: PathBuf,
        /// Requested column.
        column: String,
        /// Header columns, comma-separated.
        available: String,
    },
    /// A manifest row points at a file that does not exist.
    #[error("manifest {manifest} line {line}: image file {path} does not exist. Fix the path or remove the row")]
    MissingFile {
        /// Manifest path.
        manifest: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Resolved image path.
        path: PathBuf,
    },
    /// A label cell is empty or a split cell is unknown.
    #[error("manifest {manifest} line {line}: bad value '{value}' in column '{column}'. {hint}")]
    BadValue {
        /// Manifest path.
        manifest: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: String,
        /// Offending value.
        value: String,
        /// What to do.
        hint: &'static str,
    },
    /// The CSV is malformed.
    #[error("manifest {manifest} is not valid CSV: {message}")]
    Csv {
        /// Manifest path.
        manifest: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A class folder holds no images.
    #[error("class folder {0} holds no images (.jpg, .png, .webp, ...). Add images or remove the folder")]
    EmptyClass(PathBuf),
    /// Nothing to train on.
    #[error("no labelled images found under {0}. Expected <root>/<label>/*.jpg folders or a CSV manifest")]
    Empty(PathBuf),
    /// Datasets combined into one run have different label levels.
    #[error("datasets have different label levels ({first} vs {other}). Give every dataset the same levels, e.g. --labels character=name")]
    Levels {
        /// Levels of the first dataset.
        first: String,
        /// Levels of the other.
        other: String,
    },
    /// A held-out character is not in the data.
    #[error("character '{0}' is not in the data. Check the names given to --hold-out")]
    UnknownCharacter(String),
}

/// The start of an exemplar class's name (see [`Dataset::exemplars`]).
pub const EXEMPLAR_PREFIX: &str = "exemplar:";

/// A labelled image collection with one or more label levels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Label level names; the first is the primary level (character).
    pub levels: Vec<String>,
    /// Class names per level, sorted; sample labels index into these.
    pub classes: Vec<Vec<String>>,
    /// All samples.
    pub samples: Vec<Sample>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// Stable pseudo-random key of a path, for deterministic splits.
fn path_key(path: &Path) -> [u8; 8] {
    let digest = Sha256::digest(path.to_string_lossy().as_bytes());
    digest[..8].try_into().expect("8 bytes")
}

impl Dataset {
    /// Builds a dataset from `(path, labels per level, optional split)` rows; rows without a
    /// split are assigned 8:1:1 per primary class.
    fn from_rows(levels: Vec<String>, rows: Vec<(PathBuf, Vec<String>, Option<Split>)>) -> Self {
        let classes: Vec<Vec<String>> = (0..levels.len())
            .map(|l| {
                rows.iter()
                    .map(|r| r.1[l].clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .collect();
        let mut unsplit: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut samples: Vec<Sample> = rows
            .iter()
            .enumerate()
            .map(|(i, (path, labels, split))| {
                if split.is_none() {
                    unsplit.entry(labels[0].clone()).or_default().push(i);
                }
                let labels = labels
                    .iter()
                    .zip(&classes)
                    .map(|(l, names)| names.binary_search(l).expect("label collected above") as u32)
                    .collect();
                Sample {
                    path: path.clone(),
                    labels,
                    split: split.unwrap_or(Split::Train),
                }
            })
            .collect();
        for members in unsplit.values_mut() {
            members.sort_by_key(|&i| path_key(&samples[i].path));
            let n = members.len();
            let (n_val, n_test) = if n >= 10 {
                (n / 10, n / 10)
            } else if n >= 3 {
                (1, 1)
            } else {
                (0, 0)
            };
            for (rank, &i) in members.iter().enumerate() {
                samples[i].split = if rank < n_val {
                    Split::Val
                } else if rank < n_val + n_test {
                    Split::Test
                } else {
                    Split::Train
                };
            }
        }
        Self {
            levels,
            classes,
            samples,
        }
    }

    /// Reads `root/<label>/*` or, when `root` has any of `train/`, `val/`, `test/` folders,
    /// `root/<split>/<label>/*`. One label level, `character`.
    pub fn from_folders(root: &Path) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Io {
                path: root.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        let split_dirs: Vec<(PathBuf, Split)> = read_dir_sorted(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| {
                let split = Split::parse(p.file_name()?.to_str()?)?;
                Some((p, split))
            })
            .collect();
        // Any split folder (a folder of only `test/` included) means the split layout, so that
        // `test` is never taken for a character.
        let has_splits = !split_dirs.is_empty();
        let sources: Vec<(PathBuf, Option<Split>)> = if has_splits {
            split_dirs.into_iter().map(|(p, s)| (p, Some(s))).collect()
        } else {
            vec![(root.to_path_buf(), None)]
        };
        let mut rows = Vec::new();
        for (dir, split) in sources {
            for class_dir in read_dir_sorted(&dir)?.into_iter().filter(|p| p.is_dir()) {
                let label = class_dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                let images: Vec<PathBuf> = read_dir_sorted(&class_dir)?
                    .into_iter()
                    .filter(|p| is_image(p))
                    .collect();
                if images.is_empty() {
                    return Err(DataError::EmptyClass(class_dir));
                }
                rows.extend(images.into_iter().map(|p| (p, vec![label.clone()], split)));
            }
        }
        if rows.is_empty() {
            return Err(DataError::Empty(root.into()));
        }
        Ok(Self::from_rows(vec!["character".into()], rows))
    }

    /// Reads a CSV manifest. Paths are relative to the manifest's folder unless absolute.
    pub fn from_manifest(
        manifest: &Path,
        path_column: &str,
        label_columns: &[LabelColumn],
        split_column: Option<&str>,
    ) -> Result<Self, DataError> {
        let csv_err = |e: csv::Error| DataError::Csv {
            manifest: manifest.into(),
            message: e.to_string(),
        };
        let file = std::fs::File::open(manifest).map_err(|source| DataError::Io {
            path: manifest.into(),
            source,
        })?;
        let mut reader = csv::Reader::from_reader(file);
        let header = reader.headers().map_err(csv_err)?.clone();
        let column = |name: &str| -> Result<usize, DataError> {
            header
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| DataError::MissingColumn {
                    manifest: manifest.into(),
                    column: name.into(),
                    available: header.iter().collect::<Vec<_>>().join(", "),
                })
        };
        let path_idx = column(path_column)?;
        let label_idx: Vec<usize> = label_columns
            .iter()
            .map(|l| column(&l.column))
            .collect::<Result<_, _>>()?;
        let split_idx = split_column.map(column).transpose()?;
        let base = manifest.parent().unwrap_or(Path::new("."));
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(csv_err)?;
            let line = i + 2;
            let bad = |column: &str, value: &str, hint: &'static str| DataError::BadValue {
                manifest: manifest.into(),
                line,
                column: column.into(),
                value: value.into(),
                hint,
            };
            let path = base.join(record.get(path_idx).unwrap_or_default());
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    manifest: manifest.into(),
                    line,
                    path,
                });
            }
            let mut labels = Vec::with_capacity(label_idx.len());
            for (&idx, spec) in label_idx.iter().zip(label_columns) {
                let value = record.get(idx).unwrap_or_default().trim();
                if value.is_empty() {
                    return Err(bad(
                        &spec.column,
                        value,
                        "Every row needs a non-empty label",
                    ));
                }
                labels.push(value.to_string());
            }
            let split = match split_idx {
                Some(idx) => {
                    let value = record.get(idx).unwrap_or_default();
                    Some(Split::parse(value).ok_or_else(|| {
                        bad(
                            split_column.unwrap_or_default(),
                            value,
                            "Use train, val or test",
                        )
                    })?)
                }
                None => None,
            };
            rows.push((path, labels, split));
        }
        if rows.is_empty() {
            return Err(DataError::Empty(manifest.into()));
        }
        let levels = label_columns.iter().map(|l| l.level.clone()).collect();
        Ok(Self::from_rows(levels, rows))
    }

    /// Exemplar classes: every picture its own class at the one level `level`, all in the
    /// training split. Unlabelled pictures (one portrait per character, say) become identities for
    /// a margin loss, each picture's augmented versions its only members, so a few thousand
    /// pictures without labels act as a few thousand negatives of every labelled class. Classes
    /// are named [`EXEMPLAR_PREFIX`] and the file name, numbered when two files share one.
    pub fn exemplars(level: &str, pictures: &[PathBuf]) -> Result<Self, DataError> {
        if pictures.is_empty() {
            return Err(DataError::Empty(PathBuf::new()));
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let rows = pictures
            .iter()
            .map(|path| {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                let n = seen.entry(file.to_string()).or_default();
                *n += 1;
                let name = match *n {
                    1 => format!("{EXEMPLAR_PREFIX}{file}"),
                    n => format!("{EXEMPLAR_PREFIX}{file}#{n}"),
                };
                (path.clone(), vec![name], Some(Split::Train))
            })
            .collect();
        Ok(Self::from_rows(vec![level.to_string()], rows))
    }

    /// Samples of one split.
    /// One dataset over the samples of all `parts`, with a joint label space per level (labels
    /// with the same name are one class). The parts must have the same levels.
    pub fn union(parts: Vec<Dataset>) -> Result<Self, DataError> {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Err(DataError::Empty(PathBuf::new()));
        };
        let mut rows = first.rows();
        for part in parts {
            if part.levels != first.levels {
                return Err(DataError::Levels {
                    first: first.levels.join(","),
                    other: part.levels.join(","),
                });
            }
            rows.extend(part.rows());
        }
        Ok(Self::from_rows(first.levels, rows))
    }

    /// The dataset without the images whose primary label is in `names` (characters held out of
    /// training, to measure how the embedding does on characters it never saw). Unknown names
    /// are an error, so a typo cannot silently hold out nothing.
    pub fn without_characters(&self, names: &[String]) -> Result<Self, DataError> {
        if let Some(unknown) = names.iter().find(|n| !self.classes[0].contains(n)) {
            return Err(DataError::UnknownCharacter(unknown.clone()));
        }
        let rows = self
            .rows()
            .into_iter()
            .filter(|(_, labels, _)| !names.contains(&labels[0]))
            .collect();
        Ok(Self::from_rows(self.levels.clone(), rows))
    }

    fn rows(&self) -> Vec<(PathBuf, Vec<String>, Option<Split>)> {
        self.samples
            .iter()
            .map(|s| {
                let labels = s
                    .labels
                    .iter()
                    .zip(&self.classes)
                    .map(|(&l, names)| names[l as usize].clone())
                    .collect();
                (s.path.clone(), labels, Some(s.split))
            })
            .collect()
    }

    pub fn split(&self, split: Split) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.split == split)
            .cloned()
            .collect()
    }

    /// Number of samples per class of the primary level within `samples`.
    pub fn class_counts(&self, samples: &[Sample]) -> Vec<usize> {
        let mut counts = vec![0; self.classes[0].len()];
        for s in samples {
            counts[s.labels[0] as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn exemplars_are_one_training_class_per_picture_with_distinct_names() {
        let pictures: Vec<PathBuf> = ["a/1.jpg", "b/1.jpg", "a/2.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let ds = Dataset::exemplars("character", &pictures).unwrap();
        assert_eq!(ds.levels, vec!["character"]);
        assert_eq!(
            ds.classes[0],
            vec!["exemplar:1.jpg", "exemplar:1.jpg#2", "exemplar:2.png"]
        );
        assert_eq!(ds.split(Split::Train).len(), 3);
        let labels: Vec<u32> = ds.samples.iter().map(|s| s.labels[0]).collect();
        assert_eq!(labels, vec![0, 1, 2]);
        // Joined to a labelled set, they add classes and keep everyone's labels.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            touch(&dir.path().join(format!("zed/{i}.jpg")));
        }
        let labelled = Dataset::from_folders(dir.path()).unwrap();
        let joint = Dataset::union(vec![labelled, ds]).unwrap();
        assert_eq!(joint.classes[0].len(), 4);
        assert_eq!(joint.classes[0][3], "zed");
        assert!(Dataset::exemplars("character", &[]).is_err());
    }

    #[test]
    fn folders_without_splits_get_a_deterministic_8_1_1_split() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["a", "b"] {
            for i in 0..20 {
                touch(&dir.path().join(c).join(format!("{i}.jpg")));
            }
        }
        touch(&dir.path().join("a/readme.txt"));
        let ds = Dataset::from_folders(dir.path()).unwrap();
        assert_eq!(ds.classes[0], vec!["a", "b"]);
        assert_eq!(ds.samples.len(), 40);
        assert_eq!(ds.split(Split::Train).len(), 32);
        assert_eq!(ds.split(Split::Val).len(), 4);
        assert_eq!(ds.split(Split::Test).len(), 4);
        let again = Dataset::from_folders(dir.path()).unwrap();
        assert_eq!(ds.samples, again.samples);
    }

    #[test]
    fn split_folders_are_respected_and_empty_classes_refused() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("train/x/1.png"));
        touch(&dir.path().join("val/x/2.png"));
        let ds = Dataset::from_folders(dir.path()).unwrap();
        assert_eq!(ds.split(Split::Val).len(), 1);
        fs::create_dir_all(dir.path().join("train/empty")).unwrap();
        let err = Dataset::from_folders(dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds no images"), "{err}");
    }

    #[test]
    fn a_folder_of_only_test_images_is_the_test_split_not_a_character() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("test/x/1.png"));
        touch(&dir.path().join("test/y/2.png"));
        let ds = Dataset::from_folders(dir.path()).unwrap();
        assert_eq!(ds.classes[0], vec!["x", "y"]);
        assert_eq!(ds.split(Split::Test).len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_split_and_character_folders_are_followed() {
        let real = tempfile::tempdir().unwrap();
        touch(&real.path().join("gura/1.png"));
        touch(&real.path().join("ame/1.png"));
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("train")).unwrap();
        std::os::unix::fs::symlink(real.path().join("gura"), dir.path().join("train/gura"))
            .unwrap();
        std::os::unix::fs::symlink(real.path(), dir.path().join("val")).unwrap();
        let ds = Dataset::from_folders(dir.path()).unwrap();
        assert_eq!(ds.classes[0], vec!["ame", "gura"]);
        assert_eq!(ds.split(Split::Train).len(), 1);
        assert_eq!(ds.split(Split::Val).len(), 2);
    }

    #[test]
    fn manifest_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("img/1.png"));
        let m = dir.path().join("m.csv");
        let labels = [
            LabelColumn::parse("character=name"),
            LabelColumn::parse("work=gen"),
        ];
        fs::write(&m, "path,name,gen,split\nimg/1.png,pika,1,train\n").unwrap();
        let ds = Dataset::from_manifest(&m, "path", &labels, Some("split")).unwrap();
        assert_eq!(ds.levels, vec!["character", "work"]);
        assert_eq!(ds.classes[1], vec!["1"]);

        let err = Dataset::from_manifest(&m, "file", &labels, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column 'file'") && err.contains("path, name, gen, split"),
            "{err}"
        );
        fs::write(&m, "path,name,gen\nimg/missing.png,pika,1\n").unwrap();
        let err = Dataset::from_manifest(&m, "path", &labels, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("does not exist"),
            "{err}"
        );
        fs::write(&m, "path,name,gen\nimg/1.png,,1\n").unwrap();
        let err = Dataset::from_manifest(&m, "path", &labels, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column 'name'") && err.contains("non-empty"),
            "{err}"
        );
        fs::write(&m, "path,name,gen,split\nimg/1.png,a,1,later\n").unwrap();
        let err = Dataset::from_manifest(&m, "path", &labels, Some("split"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("train, val or test"), "{err}");
    }
}
