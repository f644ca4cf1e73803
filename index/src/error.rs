//! Errors of the catalogue. Every message says what went wrong and what the user can do about it,
//! because these messages reach the CLI and the HTTP API unchanged.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Everything that can go wrong when opening, writing or querying a catalogue.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Another process (or another open `Catalog` in this process) holds the folder's lock.
    #[error(
        "catalogue folder {} is held by another animelens process (only one process may open a catalogue); \
         stop that process (for example a running `animelens serve`) or use a different folder \
         (--db for the CLI commands, data_dir / --data-dir / ANIMELENS_DATA_DIR for `serve`)",
        dir.display()
    )]
    Locked {
        /// The catalogue folder.
        dir: PathBuf,
    },

    /// The catalogue was built with another model than the one being used now.
    #[error(
        "catalogue {} was indexed with model fingerprint {stored} ({stored_dim}-d embeddings) but the model \
         in use has fingerprint {requested} ({requested_dim}-d); embeddings from different models cannot be \
         compared: pass the checkpoint the catalogue was built with as --model, run `animelens index rebuild --reembed \
         --model CKPT --db {}` to re-embed every item with this model, or create a new catalogue folder",
        dir.display(), dir.display()
    )]
    ModelMismatch {
        /// The catalogue folder.
        dir: PathBuf,
        /// Fingerprint stored in the catalogue.
        stored: String,
        /// Embedding dimension stored in the catalogue.
        stored_dim: usize,
        /// Fingerprint of the model in use.
        requested: String,
        /// Embedding dimension of the model in use.
        requested_dim: usize,
    },

    /// Opening without a model tag a folder that holds no catalogue yet.
    #[error(
        "no catalogue in {}: the folder has never been indexed; create it with `animelens index add DIR --db {} [--model CKPT]` \
         (or `animelens index import-vectors FILE --fingerprint FP --db {}`), or check the --db path",
        dir.display(), dir.display(), dir.display()
    )]
    NotInitialised {
        /// The folder that was opened.
        dir: PathBuf,
    },

    /// The disk filled up during a write; the write was not acknowledged.
    #[error(
        "no space left on the device while writing catalogue {}: {source}; the write was not acknowledged \
         (retry it after freeing disk space; the catalogue's earlier contents are intact)",
        dir.display()
    )]
    DiskFull {
        /// The catalogue folder.
        dir: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// The store was closed after a failed write and could not be reopened yet.
    #[error(
        "catalogue {} is temporarily unavailable: its storage failed and could not be reopened yet; \
         free disk space (or fix the disk), then retry: the next write reopens it",
        dir.display()
    )]
    StorageUnavailable {
        /// The catalogue folder.
        dir: PathBuf,
    },

    /// The folder cannot be written.
    #[error(
        "catalogue folder {} cannot be written ({source}); make the folder writable by this user, \
         or copy the catalogue to a writable folder and use that (--db for the CLI commands, \
         data_dir / --data-dir / ANIMELENS_DATA_DIR for `serve`)",
        dir.display()
    )]
    ReadOnly {
        /// The catalogue folder.
        dir: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// Any other error from the store (its type is the store's business, not the callers').
    #[error(
        "storage error in catalogue {}: {source}; check the disk and the folder's permissions and retry; \
         if it persists, restore the folder from a backup",
        dir.display()
    )]
    Storage {
        /// The catalogue folder.
        dir: PathBuf,
        /// What the store reported.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored record could not be decoded.
    #[error(
        "catalogue {} holds a damaged record ({what}); restore the folder from a backup, or remove the \
         damaged item with `animelens index remove ID --db {}` and `animelens index compact`",
        dir.display(), dir.display()
    )]
    Corrupt {
        /// The catalogue folder.
        dir: PathBuf,
        /// Which record, and what is wrong with it.
        what: String,
    },

    /// A vector given by the caller is unusable.
    #[error(
        "invalid embedding: {reason}; pass the {expected}-d L2-normalised embedding produced by the \
         catalogue's model"
    )]
    BadVector {
        /// What is wrong with the vector.
        reason: String,
        /// The catalogue's embedding dimension.
        expected: usize,
    },

    /// The item id does not name a live item.
    #[error(
        "no live item with id {id} in the catalogue (never added, or removed); search again to get current ids"
    )]
    UnknownItem {
        /// The id asked for.
        id: u64,
    },

    /// The character name is neither a label of any live item nor enrolled.
    #[error(
        "unknown character {name:?}: no live item carries it at level \"character\" and it was never enrolled; \
         check the spelling or enroll it first"
    )]
    UnknownCharacter {
        /// The name asked for.
        name: String,
    },

    /// An argument is out of its valid range.
    #[error("invalid argument: {what}; {fix}")]
    InvalidArgument {
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: String,
    },

    /// A remote storage backend (a Milvus server) did not answer or refused the request.
    #[error(
        "the {backend} server is unavailable or refused the request ({reason}); check that it is running \
         and reachable at the configured {setting}, then retry"
    )]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// The setting naming its address.
        setting: &'static str,
        /// What the server or the connection said.
        reason: String,
    },

    /// The HNSW dump could not be written (the catalogue itself is unaffected).
    #[error(
        "could not save the search index to {}: {reason}; the catalogue is intact and the index will be \
         rebuilt on the next open; check free space and permissions of that folder",
        path.display()
    )]
    Dump {
        /// The dump folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl CatalogError {
    /// Shorthand for [`CatalogError::InvalidArgument`].
    pub(crate) fn invalid(what: impl Into<String>, fix: impl Into<String>) -> Self {
        CatalogError::InvalidArgument {
            what: what.into(),
            fix: fix.into(),
        }
    }

    /// Shorthand for [`CatalogError::Corrupt`].
    pub(crate) fn corrupt(dir: &Path, what: impl Into<String>) -> Self {
        CatalogError::Corrupt {
            dir: dir.to_path_buf(),
            what: what.into(),
        }
    }

    /// Maps a sled error to the most specific variant, naming the catalogue folder.
    pub(crate) fn storage(dir: &Path, err: sled::Error) -> Self {
        let dir = dir.to_path_buf();
        match err {
            sled::Error::Io(io_err) => Self::from_io(dir, io_err),
            sled::Error::Corruption { at, .. } => CatalogError::Corrupt {
                dir,
                what: format!("sled reports corruption at {at:?}"),
            },
            other => CatalogError::Storage {
                dir,
                source: Box::new(other),
            },
        }
    }

    /// Maps an I/O error met while writing the catalogue folder.
    pub(crate) fn from_io(dir: PathBuf, err: io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EROFS: i32 = 30;
        const EACCES: i32 = 13;
        const EDQUOT: i32 = 122;
        if err.to_string().contains("could not acquire lock") {
            return CatalogError::Locked { dir };
        }
        match (err.kind(), err.raw_os_error()) {
            (io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded, _)
            | (_, Some(ENOSPC | EDQUOT)) => CatalogError::DiskFull { dir, source: err },
            (io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied, _)
            | (_, Some(EROFS | EACCES)) => CatalogError::ReadOnly { dir, source: err },
            _ => CatalogError::Storage {
                dir,
                source: Box::new(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_actionable_variants() {
        let dir = PathBuf::from("/tmp/cat");
        let full = CatalogError::from_io(dir.clone(), io::Error::from_raw_os_error(28));
        assert!(matches!(full, CatalogError::DiskFull { .. }));
        assert!(full.to_string().contains("not acknowledged"));
        let ro = CatalogError::from_io(dir.clone(), io::Error::from_raw_os_error(30));
        assert!(matches!(ro, CatalogError::ReadOnly { .. }));
        assert!(
            ro.to_string().contains("--data-dir"),
            "serve takes no --db: {ro}"
        );
        let lock = CatalogError::from_io(
            dir.clone(),
            io::Error::other("could not acquire lock on \"/tmp/cat/store/db\": busy"),
        );
        assert!(lock.to_string().contains("another animelens process"));
        assert!(lock.to_string().contains("/tmp/cat"));
    }
}
