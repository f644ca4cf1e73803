//! What the catalogue accepts in a record, so that no caller (the CLI, the HTTP API, a library
//! user) can store unbounded metadata or names that are unsafe to show or to use in a path: the
//! length of every text field, the number of labels and tags, and the characters of names
//! (no control characters such as NUL, no path separators, not `.` or `..`).

use crate::error::{CatalogError, Result};
use crate::record::{Item, ItemUpdate, NewItem, PRIMARY_LEVEL};
use std::collections::BTreeMap;

/// Longest label level, label value, tag, character name or user name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest item source (a file path or URL), in bytes.
pub const MAX_SOURCE_BYTES: usize = 1024;
/// Most label levels per item.
pub const MAX_LABELS: usize = 16;
/// Most tags per item.
pub const MAX_TAGS: usize = 64;
/// Most positive plus negative examples in one recommendation query.
pub const MAX_EXAMPLES: usize = 64;
/// Most ids one recommendation query may exclude.
pub const MAX_EXCLUDED: usize = 1024;
/// Events kept per user; older ones are dropped when a user records more.
pub const MAX_EVENTS_PER_USER: usize = 1000;

/// Checks a name-like field (`what` says which, for the message): 1 to [`MAX_NAME_BYTES`]
/// bytes, no control characters, no `/` or `\`, not `.` or `..`, not only white space.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(CatalogError::invalid(
            format!(
                "{what} {:?} is empty or longer than {MAX_NAME_BYTES} bytes",
                shorten(name)
            ),
            format!("give a {what} of 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
        || name == "."
        || name == ".."
    {
        return Err(CatalogError::invalid(
            format!(
                "{what} {:?} contains control characters or path separators",
                shorten(name)
            ),
            format!(
                "give a {what} without control characters (such as NUL), '/', '\\', '.' or '..'"
            ),
        ));
    }
    Ok(())
}

/// Checks the metadata of an item to add.
pub(crate) fn check_new_item(item: &NewItem) -> Result<()> {
    check_record(&item.source, &item.labels, &item.tags)
}

/// Checks an item copied from another catalogue: a kept id and a valid record.
pub(crate) fn check_restored(item: &Item) -> Result<()> {
    if item.id == 0 {
        return Err(CatalogError::invalid(
            "a restored item has id 0",
            "restore items with the ids their catalogue gave them",
        ));
    }
    check_record(&item.source, &item.labels, &item.tags)
}

fn check_record(source: &str, labels: &BTreeMap<String, String>, tags: &[String]) -> Result<()> {
    if source.len() > MAX_SOURCE_BYTES || source.chars().any(char::is_control) {
        return Err(CatalogError::invalid(
            format!("item source {:?} is longer than {MAX_SOURCE_BYTES} bytes or contains control characters", shorten(source)),
            format!("give a source (file name or URL) of at most {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    check_labels(labels)?;
    check_tags(tags)
}

/// Checks an item update.
pub(crate) fn check_update(update: &ItemUpdate) -> Result<()> {
    if let Some(labels) = &update.labels {
        check_labels(labels)?;
    }
    if let Some(tags) = &update.tags {
        check_tags(tags)?;
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(CatalogError::invalid(
            format!(
                "{} label levels, over the limit of {MAX_LABELS}",
                labels.len()
            ),
            format!("give at most {MAX_LABELS} label levels per item"),
        ));
    }
    for (level, value) in labels {
        check_name("label level", level)?;
        let what = if level == PRIMARY_LEVEL {
            "character name"
        } else {
            "label"
        };
        check_name(what, value)?;
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(CatalogError::invalid(
            format!("{} tags, over the limit of {MAX_TAGS}", tags.len()),
            format!("give at most {MAX_TAGS} tags per item"),
        ));
    }
    tags.iter().try_for_each(|t| check_name("tag", t))
}

/// Checks the list sizes of a recommendation query.
pub fn check_examples(examples: usize, excluded: usize) -> Result<()> {
    if examples > MAX_EXAMPLES || excluded > MAX_EXCLUDED {
        return Err(CatalogError::invalid(
            format!("{examples} examples and {excluded} excluded ids in one recommendation"),
            format!("give at most {MAX_EXAMPLES} positive and negative examples together and at most {MAX_EXCLUDED} excluded ids"),
        ));
    }
    Ok(())
}

/// The first few characters of a (possibly huge) value, for error messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_safe() {
        assert!(check_name("character name", "Gawr Gura").is_ok());
        assert!(check_name("character name", "ワトソン・アメリア").is_ok());
        for bad in [
            "",
            "  ",
            "a\0b",
            "../../etc",
            "a/b",
            "a\\b",
            "..",
            "line\nbreak",
        ] {
            assert!(check_name("character name", bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let err = check_name("tag", &long).unwrap_err().to_string();
        assert!(err.len() < 400, "the message quotes only the start: {err}");
    }

    #[test]
    fn items_and_queries_are_bounded() {
        let mut item = NewItem {
            tags: vec!["t".into(); MAX_TAGS + 1],
            ..NewItem::default()
        };
        assert!(check_new_item(&item).is_err());
        item.tags = vec!["t".into()];
        item.labels
            .insert(PRIMARY_LEVEL.into(), "x".repeat(1 << 20));
        assert!(check_new_item(&item).is_err());
        item.labels.insert(PRIMARY_LEVEL.into(), "ame".into());
        assert!(check_new_item(&item).is_ok());
        assert!(check_examples(MAX_EXAMPLES, MAX_EXCLUDED).is_ok());
        assert!(check_examples(200_000, 0).is_err());
    }
}
