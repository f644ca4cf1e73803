//! Search filters and the in-memory inverted index (label and tag postings of live items) that
//! evaluates them. Postings are derived from sled at open and updated with every write.

use crate::record::{Item, ItemId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Conditions an item must meet, all ANDed: one value per label level, and every tag listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Required label per level, e.g. `"work" => "hololive"`.
    pub labels: BTreeMap<String, String>,
    /// Required tags.
    pub tags: Vec<String>,
}

impl Filter {
    /// The filter that matches every live item.
    pub fn any() -> Self {
        Filter::default()
    }

    /// Adds a `level = value` condition.
    pub fn label(mut self, level: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(level.into(), value.into());
        self
    }

    /// Adds a required tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// True when the filter has no condition.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.tags.is_empty()
    }

    /// Whether `item` meets every condition.
    pub fn matches(&self, item: &Item) -> bool {
        self.labels
            .iter()
            .all(|(level, value)| item.labels.get(level) == Some(value))
            && self.tags.iter().all(|t| item.tags.contains(t))
    }
}

/// Label and tag postings of live items.
#[derive(Debug, Default)]
pub(crate) struct Postings {
    labels: HashMap<(String, String), BTreeSet<ItemId>>,
    tags: HashMap<String, BTreeSet<ItemId>>,
}

impl Postings {
    /// Indexes a live item.
    pub(crate) fn insert(&mut self, item: &Item) {
        for (level, value) in &item.labels {
            self.labels
                .entry((level.clone(), value.clone()))
                .or_default()
                .insert(item.id);
        }
        for tag in &item.tags {
            self.tags.entry(tag.clone()).or_default().insert(item.id);
        }
    }

    /// Forgets an item (removed, or about to be re-indexed with new metadata).
    pub(crate) fn remove(&mut self, item: &Item) {
        for (level, value) in &item.labels {
            let key = (level.clone(), value.clone());
            if let Some(set) = self.labels.get_mut(&key) {
                set.remove(&item.id);
                if set.is_empty() {
                    self.labels.remove(&key);
                }
            }
        }
        for tag in &item.tags {
            if let Some(set) = self.tags.get_mut(tag) {
                set.remove(&item.id);
                if set.is_empty() {
                    self.tags.remove(tag);
                }
            }
        }
    }

    /// Live ids matching `filter` in increasing order, or `None` when the filter is empty
    /// (every live item matches).
    pub(crate) fn matching(&self, filter: &Filter) -> Option<Vec<ItemId>> {
        if filter.is_empty() {
            return None;
        }
        let empty = BTreeSet::new();
        let mut sets: Vec<&BTreeSet<ItemId>> = filter
            .labels
            .iter()
            .map(|(l, v)| self.labels.get(&(l.clone(), v.clone())).unwrap_or(&empty))
            .chain(
                filter
                    .tags
                    .iter()
                    .map(|t| self.tags.get(t).unwrap_or(&empty)),
            )
            .collect();
        sets.sort_by_key(|s| s.len());
        let (first, rest) = sets
            .split_first()
            .expect("a non-empty filter has a condition");
        Some(
            first
                .iter()
                .copied()
                .filter(|id| rest.iter().all(|s| s.contains(id)))
                .collect(),
        )
    }

    /// Live ids carrying `value` at `level`.
    pub(crate) fn with_label(&self, level: &str, value: &str) -> Option<&BTreeSet<ItemId>> {
        self.labels.get(&(level.to_string(), value.to_string()))
    }

    /// Distinct values present at `level`, with their live item counts.
    pub(crate) fn values_at(&self, level: &str) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self
            .labels
            .iter()
            .filter(|((l, _), _)| l == level)
            .map(|((_, v), set)| (v.clone(), set.len()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: ItemId, character: &str, work: &str, tags: &[&str]) -> Item {
        Item {
            id,
            source: format!("img{id}.png"),
            labels: [("character", character), ("work", work)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            width: 1,
            height: 1,
            content_hash: String::new(),
            added_at_ms: 0,
            frame: None,
        }
    }

    #[test]
    fn postings_intersect_labels_and_tags() {
        let mut p = Postings::default();
        let items = [
            item(1, "gura", "holo", &["shark"]),
            item(2, "ame", "holo", &[]),
            item(3, "gura", "holo", &[]),
            item(4, "pika", "poke", &["shark"]),
        ];
        items.iter().for_each(|i| p.insert(i));
        assert_eq!(p.matching(&Filter::any()), None);
        assert_eq!(
            p.matching(&Filter::any().label("work", "holo")),
            Some(vec![1, 2, 3])
        );
        let f = Filter::any().label("character", "gura").tag("shark");
        assert_eq!(p.matching(&f), Some(vec![1]));
        assert!(f.matches(&items[0]) && !f.matches(&items[2]));
        assert_eq!(p.matching(&Filter::any().tag("none")), Some(vec![]));
        p.remove(&items[0]);
        assert_eq!(p.matching(&f), Some(vec![]));
        assert_eq!(
            p.values_at("character"),
            vec![("ame".into(), 1), ("gura".into(), 1), ("pika".into(), 1)]
        );
    }
}
