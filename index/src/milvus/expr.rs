//! Milvus boolean expressions for the catalogue's filters: the primary label is a test on its own
//! string field, a label at another level a JSON path test on the `labels` field, a tag is `json_contains` on `tags`, excluded and listed ids are literal
//! `id in [..]` lists (milvus-lite rejects the SDK's templated id filters). Strings are quoted with
//! `"` and `\` escaped, so a label value cannot change the expression.

use crate::filter::Filter;
use crate::milvus::fields::PRIMARY;
use crate::record::{ItemId, PRIMARY_LEVEL};
use std::collections::HashSet;

/// A string literal in Milvus's expression grammar.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A literal id list, `[1, 2, 3]`.
pub(crate) fn id_list(ids: impl IntoIterator<Item = ItemId>) -> String {
    let ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    format!("[{}]", ids.join(", "))
}

/// The expression selecting items matching `filter` and not in `exclude` (empty: everything).
pub(crate) fn filter_expression(filter: &Filter, exclude: &HashSet<ItemId>) -> String {
    let mut terms: Vec<String> = filter
        .labels
        .iter()
        .map(|(level, value)| match level.as_str() {
            PRIMARY_LEVEL => format!("{PRIMARY} == {}", quoted(value)),
            _ => format!("labels[{}] == {}", quoted(level), quoted(value)),
        })
        .collect();
    terms.extend(
        filter
            .tags
            .iter()
            .map(|t| format!("json_contains(tags, {})", quoted(t))),
    );
    if !exclude.is_empty() {
        let mut ids: Vec<ItemId> = exclude.iter().copied().collect();
        ids.sort_unstable();
        terms.push(format!("id not in {}", id_list(ids)));
    }
    terms.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_cannot_escape_the_literal() {
        assert_eq!(quoted("gura"), "\"gura\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn filters_become_one_conjunction() {
        let f = Filter::any()
            .label("character", "gura")
            .label("work", "en")
            .tag("fanart");
        let e = filter_expression(&f, &HashSet::from([9, 2]));
        assert_eq!(
            e,
            "primary_label == \"gura\" and labels[\"work\"] == \"en\" and \
             json_contains(tags, \"fanart\") and id not in [2, 9]"
        );
        assert_eq!(filter_expression(&Filter::any(), &HashSet::new()), "");
    }
}
