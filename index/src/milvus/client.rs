//! The Milvus side of [`super::MilvusStorage`]: one collection per catalogue (`id` Int64 primary
//! key, `embedding` FloatVector, `labels` and `tags` JSON for filters) and, once an item has copy
//! descriptors, a second one `<collection>_copies` (`id` = point id of one view, `embedding` =
//! its descriptor), each with an HNSW index on inner product (the vectors are normalised, so
//! scores are cosines), and the few calls the storage needs, made synchronous on a small runtime of their own. Every read is `Strong`: a search sees
//! every write this service acknowledged (the catalogue's promise), at the price of waiting for
//! the server's latest timestamp; `Bounded` would be faster on a busy cluster.

use crate::error::{CatalogError, Result};
use crate::limits;
use crate::milvus::expr::id_list;
use crate::milvus::fields::{EMBEDDING, ID, LABELS, PRIMARY, TAGS};
use crate::record::{Item, ItemId};
use milvus::v2 as sdk;
use milvus::v2::prelude::*;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

/// Milvus's largest `limit` (top-k and query window).
pub(crate) const MAX_LIMIT: usize = 16_384;
/// Ids per `id in [..]` query.
const IDS_PER_QUERY: usize = 1_000;
/// How long a flush may take, in milliseconds.
const FLUSH_WITHIN_MS: i64 = 120_000;
/// How long reads wait for a collection the server is (re)loading.
const RELOAD_WITHIN: Duration = Duration::from_secs(30);

/// Where the Milvus server is and which collection holds the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilvusConfig {
    /// Server address, e.g. `http://127.0.0.1:19530`.
    pub uri: String,
    /// The collection (created on first use).
    pub collection: String,
    /// `user:password` or an API token; `None` for a server without authentication.
    pub token: Option<String>,
}

/// What a collection's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// One row per item: its embedding, labels and tags (the filters).
    Items,
    /// One row per view of an item's copy descriptors: `id` is the point id
    /// (`item · VIEW_STRIDE + view`), `embedding` the descriptor.
    CopyViews,
}

/// A connected client bound to one collection.
pub(crate) struct Collection {
    /// `None` only while dropping (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    client: ClientV2,
    name: String,
    rows: Rows,
    /// Components of the vectors it holds.
    dim: usize,
}

/// Maps an SDK error to the catalogue's "server unavailable" error.
fn unavailable(e: impl std::fmt::Display) -> CatalogError {
    CatalogError::BackendUnavailable {
        backend: "milvus",
        setting: "milvus_uri",
        reason: e.to_string(),
    }
}

impl Collection {
    /// Connects and makes sure the collection `name` holding `rows` exists with vectors of `dim`
    /// components, indexed and loaded.
    pub(crate) fn connect(
        config: &MilvusConfig,
        name: &str,
        rows: Rows,
        dim: usize,
        hnsw: (usize, usize),
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("milvus-client")
            .enable_all()
            .build()
            .map_err(unavailable)?;
        let mut connect = ConnectConfig::new()
            .uri(config.uri.clone())
            .connect_timeout(Duration::from_secs(5))
            .rpc_timeout(Duration::from_secs(30))
            .retry(
                RetryConfig::new()
                    .max_attempts(3)
                    .max_retry_timeout(Duration::from_secs(10)),
            );
        if let Some(token) = &config.token {
            connect = connect.token(token.clone());
        }
        let client = runtime
            .block_on(ClientV2::new(&connect))
            .map_err(unavailable)?;
        let collection = Collection {
            runtime: Some(runtime),
            client,
            name: name.to_string(),
            rows,
            dim,
        };
        collection.ensure(dim, hnsw)?;
        Ok(collection)
    }

    /// Runs a future on the client's runtime, also from inside another runtime's thread.
    fn run<T: Send, F: Future<Output = milvus::v2::error::Result<T>> + Send>(
        &self,
        f: F,
    ) -> Result<T> {
        // The SDK's error is large; it becomes a `CatalogError` inside the closure so that only
        // that crosses the thread boundary.
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the drop");
        let on_runtime = || runtime.block_on(f).map_err(unavailable);
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(on_runtime)
                    .join()
                    .expect("the Milvus call does not panic")
            })
        } else {
            on_runtime()
        }
    }

    fn ensure(&self, dim: usize, (m, ef_construction): (usize, usize)) -> Result<()> {
        let name = self.name.clone();
        if self.has_collection()? {
            return self.load();
        }
        let schema = sdk::CollectionSchema::new()
            .add_field(
                sdk::FieldSchema::new()
                    .name(ID)
                    .data_type(sdk::DataType::Int64)
                    .primary_key(true)
                    .auto_id(false),
            )
            .add_field(
                sdk::FieldSchema::new()
                    .name(EMBEDDING)
                    .data_type(sdk::DataType::FloatVector)
                    .dimension(dim as u32),
            );
        let schema = match self.rows {
            Rows::CopyViews => schema,
            Rows::Items => schema
                .add_field(
                    sdk::FieldSchema::new()
                        .name(LABELS)
                        .data_type(sdk::DataType::Json),
                )
                .add_field(
                    sdk::FieldSchema::new()
                        .name(PRIMARY)
                        .data_type(sdk::DataType::VarChar)
                        .max_length(limits::MAX_NAME_BYTES as u32),
                )
                .add_field(
                    sdk::FieldSchema::new()
                        .name(TAGS)
                        .data_type(sdk::DataType::Json),
                ),
        };
        self.run(async {
            self.client
                .create_collection(
                    CreateCollectionRequest::builder()
                        .collection_name(&name)
                        .schema(schema)
                        .consistency_level(ConsistencyLevel::Strong)
                        .build()?,
                )
                .await?;
            // `sync(false)`: the SDK's wait for the index and the load polls calls milvus-lite
            // does not implement; a real server builds the index in the background.
            self.client
                .create_index(
                    CreateIndexRequest::builder()
                        .collection_name(&name)
                        .index_params(vec![IndexParam::new()
                            .field_name(EMBEDDING)
                            .index_type(IndexType::Hnsw)
                            .metric_type(MetricType::Ip)
                            .extra_params(HashMap::from([
                                ("M".into(), m.to_string()),
                                ("efConstruction".into(), ef_construction.to_string()),
                            ]))])
                        .sync(false)
                        .build()?,
                )
                .await?;
            self.client
                .load_collection(
                    LoadCollectionRequest::builder()
                        .collection_name(&name)
                        .sync(false)
                        .build()?,
                )
                .await
        })
    }

    /// Components of the vectors the collection holds.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Whether the server answers and still has the collection (one `has_collection` call).
    pub(crate) fn check_ready(&self) -> Result<()> {
        if self.has_collection()? {
            Ok(())
        } else {
            Err(CatalogError::BackendUnavailable {
                backend: "milvus",
                setting: "milvus_collection",
                reason: format!("the server no longer has the collection {}", self.name),
            })
        }
    }

    fn has_collection(&self) -> Result<bool> {
        let answer = self.run(async {
            self.client
                .has_collection(
                    HasCollectionRequest::builder()
                        .collection_name(&self.name)
                        .build()?,
                )
                .await
        })?;
        Ok(answer.exists())
    }

    fn row(id: ItemId, vector: &[f32], item: &Item) -> serde_json::Value {
        serde_json::json!({
            ID: id as i64,
            EMBEDDING: vector,
            LABELS: item.labels,
            PRIMARY: item.character().unwrap_or_default(),
            TAGS: item.tags,
        })
    }

    /// Inserts (or replaces, with `replace`) rows of (vector, record).
    pub(crate) fn write(&self, rows: &[(&[f32], &Item)], replace: bool) -> Result<()> {
        let rows = rows
            .iter()
            .map(|(v, item)| Self::row(item.id, v, item))
            .collect();
        self.insert(rows, replace)
    }

    /// Inserts copy-descriptor rows of (point id, descriptor).
    pub(crate) fn write_views(&self, points: &[(u64, &[f32])]) -> Result<()> {
        let rows = points
            .iter()
            .map(|(point, v)| serde_json::json!({ ID: *point as i64, EMBEDDING: v }))
            .collect();
        self.insert(rows, false)
    }

    fn insert(&self, rows: Vec<serde_json::Value>, replace: bool) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let insert = InsertRequest::builder()
            .collection_name(&self.name)
            .rows(rows);
        self.run(async {
            if replace {
                self.client
                    .upsert(UpsertRequest::builder().insert(insert.build()?).build()?)
                    .await
                    .map(drop)
            } else {
                self.client.insert(insert.build()?).await.map(drop)
            }
        })
    }

    /// Deletes rows by id (a literal `id in [..]` of at most [`IDS_PER_QUERY`] ids a call).
    pub(crate) fn delete(&self, ids: &[ItemId]) -> Result<()> {
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let filter = format!("{ID} in {}", id_list(chunk.iter().copied()));
            self.run(async {
                self.client
                    .delete(
                        DeleteRequest::builder()
                            .collection_name(&self.name)
                            .filter(filter)
                            .build()?,
                    )
                    .await
                    .map(drop)
            })?;
        }
        Ok(())
    }

    /// The stored vectors of `ids` (absent ids are left out).
    pub(crate) fn vectors(&self, ids: &[ItemId]) -> Result<HashMap<ItemId, Vec<f32>>> {
        Ok(self.rows_of(ids, true)?.into_iter().collect())
    }

    /// Which of `ids` have a row.
    pub(crate) fn present(&self, ids: &[ItemId]) -> Result<HashSet<ItemId>> {
        Ok(self
            .rows_of(ids, false)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The rows of `ids` that exist, with their vectors when `with_vectors` (else empty ones).
    fn rows_of(&self, ids: &[ItemId], with_vectors: bool) -> Result<Vec<(ItemId, Vec<f32>)>> {
        self.loaded(|| self.rows_of_once(ids, with_vectors))
    }

    fn rows_of_once(&self, ids: &[ItemId], with_vectors: bool) -> Result<Vec<(ItemId, Vec<f32>)>> {
        let mut out = Vec::with_capacity(ids.len());
        let fields: &[&str] = if with_vectors {
            &[ID, EMBEDDING]
        } else {
            &[ID]
        };
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let filter = format!("{ID} in {}", id_list(chunk.iter().copied()));
            let rows = self.run(async {
                let response = self
                    .client
                    .query(
                        QueryRequest::builder()
                            .collection_name(&self.name)
                            .filter(filter)
                            .output_fields(fields.iter().copied())
                            .limit(chunk.len() as i64)
                            .consistency_level(ConsistencyLevel::Strong)
                            .build()?,
                    )
                    .await?;
                let mut rows = Vec::new();
                for row in response.results().rows()? {
                    let ResultValue::Int64(id) = row.get(ID)? else {
                        continue;
                    };
                    let vector = match with_vectors {
                        true => match row.get(EMBEDDING)? {
                            ResultValue::FloatVector(v) => v.to_vec(),
                            _ => continue,
                        },
                        false => Vec::new(),
                    };
                    rows.push((id as ItemId, vector));
                }
                Ok(rows)
            })?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Seals the rows written so far into segments the server indexes (a growing segment is
    /// searched by brute force: 20,000 unsealed 1024-d rows cost milvus-lite ~1.9 s a search,
    /// indexed ones ~66 ms; BENCHMARKS.md), waiting until they are flushed.
    pub(crate) fn flush(&self) -> Result<()> {
        self.run(async {
            self.client
                .flush(
                    FlushRequest::builder()
                        .collection_names([self.name.as_str()])
                        .wait_flushed_ms(FLUSH_WITHIN_MS)
                        .build()?,
                )
                .await
                .map(drop)
        })
    }

    /// Asks the server to load the collection into memory (without waiting: milvus-lite lacks
    /// the RPCs to wait for it; reads retry while it loads, see [`Collection::loaded`]).
    fn load(&self) -> Result<()> {
        self.run(async {
            self.client
                .load_collection(
                    LoadCollectionRequest::builder()
                        .collection_name(&self.name)
                        .sync(false)
                        .build()?,
                )
                .await
        })
    }

    /// Runs read `op`; when the server answers that the collection is not loaded (a server
    /// restarted since the connect releases it), loads it and retries for up to
    /// [`RELOAD_WITHIN`].
    fn loaded<T>(&self, op: impl Fn() -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let mut asked = false;
        loop {
            match op() {
                Err(CatalogError::BackendUnavailable { reason, .. })
                    if (reason.contains("load()")
                        || reason.contains("not loaded")
                        || reason.contains("loading"))
                        && started.elapsed() < RELOAD_WITHIN =>
                {
                    if !asked {
                        tracing::warn!(
                            "the Milvus collection {} is not loaded; loading it",
                            self.name
                        );
                        self.load()?;
                        asked = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// `(id, inner product)` of the `k` rows nearest to `q` among those `filter` selects.
    pub(crate) fn search(
        &self,
        q: &[f32],
        k: usize,
        filter: String,
        ef: usize,
    ) -> Result<Vec<(ItemId, f32)>> {
        self.loaded(|| self.search_once(q, k, filter.clone(), ef))
    }

    fn search_once(
        &self,
        q: &[f32],
        k: usize,
        filter: String,
        ef: usize,
    ) -> Result<Vec<(ItemId, f32)>> {
        let k = k.min(MAX_LIMIT);
        self.run(async {
            let mut request = SearchRequest::builder()
                .collection_name(&self.name)
                .vector_field(EMBEDDING)
                .vectors(SearchVectors::Float(vec![q.to_vec()]))
                .output_fields([ID])
                .limit(k as i64)
                .extra_params(HashMap::from([("ef".into(), ef.max(k).to_string())]))
                .consistency_level(ConsistencyLevel::Strong);
            if !filter.is_empty() {
                request = request.filter(filter);
            }
            let response = self.client.search(request.build()?).await?;
            let mut hits = Vec::new();
            for result in response.results() {
                for row in result.rows()? {
                    if let (ResultValue::Int64(id), ResultValue::Float(score)) =
                        (row.get(ID)?, row.get("score")?)
                    {
                        hits.push((id as ItemId, score));
                    }
                }
            }
            Ok(hits)
        })
    }
}

impl Drop for Collection {
    /// Lets the client's runtime go without blocking: the last handle may be dropped on an async
    /// thread (the service's shutdown), where a blocking runtime drop would panic.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
