//! The names of the collection's fields, shared by the client (schema, rows, reads) and the
//! filter expressions.

/// The item id (Int64 primary key).
pub(crate) const ID: &str = "id";
/// The embedding (FloatVector, HNSW index).
pub(crate) const EMBEDDING: &str = "embedding";
/// The labels, level to value (JSON).
pub(crate) const LABELS: &str = "labels";
/// The primary label (`character`) again as a plain string field: it is the filter most queries
/// carry, and a typed field is filtered without parsing every row's JSON (on milvus-lite, 20,000
/// rows: 1.5 s a search through `labels["character"]`, 22 ms through this field).
pub(crate) const PRIMARY: &str = "primary_label";
/// The tags (JSON array).
pub(crate) const TAGS: &str = "tags";
