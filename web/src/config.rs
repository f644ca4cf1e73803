//! Service settings: built-in defaults, overridden by a TOML file, overridden by `ANIMELENS_<KEY>`
//! environment variables (one per key, e.g. `ANIMELENS_BIND`, `ANIMELENS_MAX_UPLOAD_BYTES`).
//! Every key is flat so that the file, the environment and the docs use the same names.

use animelens_index::GraphPrecision;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "ANIMELENS_";

/// Everything `animelens serve` can be told. Unknown keys in a file are an error (typos).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on, `HOST:PORT` (port 0 picks a free port).
    pub bind: String,
    /// Folder holding the catalogue (`<data_dir>/catalog`).
    pub data_dir: PathBuf,
    /// Checkpoint path without extension (`NAME` for `NAME.safetensors` + `NAME.json`).
    pub model: PathBuf,
    /// Image gallery ingested when the catalogue is empty (`<split>/<character>/*.jpg`);
    /// absent or empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gallery: Option<PathBuf>,
    /// Key required in the `X-Api-Key` header by write endpoints; absent: writes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Folder whose video files `POST /api/v1/videos?path=` may add; absent: only uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_dir: Option<PathBuf>,
    /// Largest accepted request body in bytes (larger: 413).
    pub max_upload_bytes: usize,
    /// Largest accepted video upload in bytes, streamed to disk (larger: 413).
    pub max_video_bytes: usize,
    /// Largest accepted image in pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// Most images accepted in one request.
    pub max_images_per_request: usize,
    /// Largest `k` a request may ask for.
    pub max_k: usize,
    /// Threads running the network.
    pub inference_workers: usize,
    /// Inference requests allowed to wait; beyond that the API answers 503 with Retry-After.
    pub queue_capacity: usize,
    /// Most images one network call processes (requests waiting together are merged up to this).
    pub max_batch: usize,
    /// HTTP worker threads (each runs an async executor).
    pub http_workers: usize,
    /// MMR trade-off of personal feeds: 1 = pure relevance, 0 = pure diversity.
    pub feed_lambda: f32,
    /// Seconds a client has to send a request's head and, separately, its whole body (then 408).
    pub request_timeout_secs: u64,
    /// Most open connections per HTTP worker; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Resident memory, in MiB, the service is sized to stay under. At start the settings are
    /// checked against it: every inference worker may hold one decoded image at the pixel limit
    /// (4 bytes a pixel) besides [`BASE_MEMORY_MIB`] for the model, buffers and the runtime.
    pub memory_budget_mib: u64,
    /// What the catalogue's search graph stores of each vector: `f32`, or `int8` (a quarter of the
    /// vector memory; candidates rescored with the stored f32 vectors). Changing it rebuilds the
    /// graph once at the next start.
    #[serde(default)]
    pub graph_precision: GraphPrecision,
    /// Where the catalogue's vectors live: `embedded` (sled + hnsw_rs in `data_dir`) or `milvus`
    /// (a Milvus server at `milvus_uri`; records, thumbnails and users stay in `data_dir`).
    #[serde(default)]
    pub backend: Backend,
    /// The Milvus server's address (with `backend = "milvus"`).
    #[serde(default = "default_milvus_uri")]
    pub milvus_uri: String,
    /// The Milvus collection holding this catalogue (created on first start).
    #[serde(default = "default_milvus_collection")]
    pub milvus_collection: String,
    /// `user:password` or API token for the Milvus server; absent: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milvus_token: Option<String>,
}

/// Which storage holds the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sled + hnsw_rs in the data folder.
    #[default]
    Embedded,
    /// A Milvus server (or cluster) for the vectors.
    Milvus,
}

fn default_milvus_uri() -> String {
    "http://127.0.0.1:19530".into()
}

fn default_milvus_collection() -> String {
    "animelens".into()
}

/// Memory the service needs besides decoding: the model, the network's buffers, the catalogue's
/// graph for a gallery of thousands of items, and the runtime.
pub const BASE_MEMORY_MIB: u64 = 512;

/// Bytes one decode may hold per pixel of `max_pixels` (one 8-bit RGBA image).
const DECODE_BYTES_PER_PIXEL: u64 = 4;

impl Settings {
    /// Defaults for everything but the model and gallery paths, which the binary knows.
    pub fn with_paths(model: PathBuf, gallery: Option<PathBuf>) -> Self {
        Settings {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("animelens-data"),
            model,
            gallery,
            api_key: None,
            media_dir: None,
            max_upload_bytes: 10 * 1024 * 1024,
            max_video_bytes: 2 * 1024 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_images_per_request: 16,
            max_k: 200,
            inference_workers: 1,
            queue_capacity: 32,
            max_batch: 16,
            http_workers: 2,
            feed_lambda: 0.7,
            request_timeout_secs: 30,
            max_connections: 256,
            memory_budget_mib: 1024,
            graph_precision: GraphPrecision::F32,
            backend: Backend::Embedded,
            milvus_uri: default_milvus_uri(),
            milvus_collection: default_milvus_collection(),
            milvus_token: None,
        }
    }

    /// Applies the TOML file `file` (if given) and then the environment (`env` looks a variable
    /// up; pass `|k| std::env::var(k).ok()`) over `self`.
    pub fn overridden(
        self,
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut table = match toml::Value::try_from(&self).expect("settings serialise") {
            toml::Value::Table(t) => t,
            _ => unreachable!("settings serialise to a table"),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                source: e,
            })?;
            let overrides: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            table.extend(overrides);
        }
        for key in KEYS {
            let var = format!("{ENV_PREFIX}{}", key.to_uppercase());
            let Some(raw) = env(&var) else { continue };
            let value = match table.get(*key) {
                Some(toml::Value::Integer(_)) => raw.trim().parse().map(toml::Value::Integer).ok(),
                Some(toml::Value::Float(_)) => raw.trim().parse().map(toml::Value::Float).ok(),
                _ => Some(toml::Value::String(raw.clone())),
            }
            .ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                value: raw.clone(),
            })?;
            table.insert(key.to_string(), value);
        }
        for key in ["gallery", "api_key", "media_dir", "milvus_token"] {
            if table.get(key).and_then(toml::Value::as_str) == Some("") {
                table.remove(key);
            }
        }
        let settings: Settings =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: file.map_or_else(|| PathBuf::from("<environment>"), Path::to_path_buf),
                    message: e.to_string(),
                })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges that the types do not.
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_upload_bytes", self.max_upload_bytes),
            ("max_images_per_request", self.max_images_per_request),
            ("max_k", self.max_k),
            ("inference_workers", self.inference_workers),
            ("queue_capacity", self.queue_capacity),
            ("max_batch", self.max_batch),
            ("http_workers", self.http_workers),
            ("request_timeout_secs", self.request_timeout_secs as usize),
            ("max_connections", self.max_connections),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
        }
        if !(0.0..=1.0).contains(&self.feed_lambda) {
            return Err(ConfigError::Invalid(format!(
                "feed_lambda {} must lie in [0, 1] (0.7 is a good value)",
                self.feed_lambda
            )));
        }
        let decoding = self.inference_workers as u64
            * self.max_pixels.saturating_mul(DECODE_BYTES_PER_PIXEL)
            / (1024 * 1024);
        if BASE_MEMORY_MIB + decoding > self.memory_budget_mib {
            return Err(ConfigError::Invalid(format!(
                "memory_budget_mib {} is too small for {} inference workers decoding images of up \
                 to max_pixels {} ({} MiB plus {BASE_MEMORY_MIB} MiB); raise memory_budget_mib or \
                 lower max_pixels or inference_workers",
                self.memory_budget_mib, self.inference_workers, self.max_pixels, decoding
            )));
        }
        Ok(())
    }

    /// The catalogue folder inside the data folder.
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalog")
    }
}

/// Every settings key (also the environment variable names, upper-cased with the prefix).
pub const KEYS: &[&str] = &[
    "bind",
    "data_dir",
    "model",
    "gallery",
    "api_key",
    "media_dir",
    "max_upload_bytes",
    "max_video_bytes",
    "max_pixels",
    "max_images_per_request",
    "max_k",
    "inference_workers",
    "queue_capacity",
    "max_batch",
    "http_workers",
    "feed_lambda",
    "request_timeout_secs",
    "max_connections",
    "memory_budget_mib",
    "graph_precision",
    "backend",
    "milvus_uri",
    "milvus_collection",
    "milvus_token",
];

/// Why the settings could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}; check the path given to --config or ANIMELENS_CONFIG", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has wrong keys or types.
    #[error("invalid settings in {}: {message}; valid keys: {}", path.display(), KEYS.join(", "))]
    File {
        /// The file (or `<environment>`).
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// An environment variable holds a value of the wrong type.
    #[error("environment variable {var}={value:?} is not a valid value for that setting; unset it or give a number")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings::with_paths(PathBuf::from("m"), Some(PathBuf::from("g")))
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = std::env::temp_dir().join(format!("animelens-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(
            &file,
            "bind = \"0.0.0.0:9000\"\nmax_k = 7\napi_key = \"from-file\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "ANIMELENS_MAX_K" => Some("9".to_string()),
            "ANIMELENS_GALLERY" => Some(String::new()),
            "ANIMELENS_FEED_LAMBDA" => Some("0.5".to_string()),
            _ => None,
        };
        let s = base().overridden(Some(&file), env).unwrap();
        assert_eq!(s.bind, "0.0.0.0:9000");
        assert_eq!(s.max_k, 9);
        assert_eq!(s.api_key.as_deref(), Some("from-file"));
        assert_eq!(s.gallery, None);
        assert_eq!(s.feed_lambda, 0.5);
        assert_eq!(s.model, PathBuf::from("m"));
    }

    #[test]
    fn graph_precision_comes_from_file_or_environment() {
        assert_eq!(base().graph_precision, GraphPrecision::F32);
        let env = |k: &str| (k == "ANIMELENS_GRAPH_PRECISION").then(|| "int8".to_string());
        let s = base().overridden(None, env).unwrap();
        assert_eq!(s.graph_precision, GraphPrecision::Int8);
        let env = |k: &str| (k == "ANIMELENS_GRAPH_PRECISION").then(|| "int4".to_string());
        let err = base().overridden(None, env).unwrap_err().to_string();
        assert!(err.contains("int4") && err.contains("int8"), "{err}");
    }

    #[test]
    fn the_milvus_backend_is_chosen_by_settings() {
        assert_eq!(base().backend, Backend::Embedded);
        let env = |k: &str| match k {
            "ANIMELENS_BACKEND" => Some("milvus".to_string()),
            "ANIMELENS_MILVUS_URI" => Some("http://127.0.0.1:19999".to_string()),
            "ANIMELENS_MILVUS_TOKEN" => Some(String::new()),
            _ => None,
        };
        let s = base().overridden(None, env).unwrap();
        assert_eq!(s.backend, Backend::Milvus);
        assert_eq!(s.milvus_uri, "http://127.0.0.1:19999");
        assert_eq!(s.milvus_collection, "animelens");
        assert_eq!(s.milvus_token, None);
        let env = |k: &str| (k == "ANIMELENS_BACKEND").then(|| "qdrant".to_string());
        let err = base().overridden(None, env).unwrap_err().to_string();
        assert!(err.contains("qdrant") && err.contains("milvus"), "{err}");
    }

    #[test]
    fn bad_values_are_reported() {
        let env = |k: &str| (k == "ANIMELENS_MAX_K").then(|| "many".to_string());
        let err = base().overridden(None, env).unwrap_err();
        assert!(err.to_string().contains("ANIMELENS_MAX_K"));
        let env = |k: &str| (k == "ANIMELENS_QUEUE_CAPACITY").then(|| "0".to_string());
        assert!(base().overridden(None, env).is_err());
        let env = |k: &str| (k == "ANIMELENS_INFERENCE_WORKERS").then(|| "8".to_string());
        let err = base().overridden(None, env).unwrap_err();
        assert!(err.to_string().contains("memory_budget_mib"), "{err}");
        let dir = std::env::temp_dir().join(format!("animelens-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serve.toml");
        std::fs::write(&file, "bnd = \"x\"\n").unwrap();
        let err = base().overridden(Some(&file), |_| None).unwrap_err();
        assert!(err.to_string().contains("bnd"), "{err}");
    }
}
