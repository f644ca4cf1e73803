//! Copying a catalogue from one storage into another (`animelens index export`: an embedded
//! catalogue into Milvus when it outgrows one machine, or Milvus back into a local copy). One
//! copy over `&dyn Storage`, so every pair of backends migrates the same way.
//!
//! What travels: every live item with its id, time of adding, record, vector, thumbnail and copy
//! descriptors (ids are kept so that the ids clients stored stay valid), the enrolled characters'
//! shot sums, every user's events (likes rebuild the popularity counts), the open-set threshold
//! and the copy verdict. What does not: removed items and the video scene index (the Milvus
//! backend has none yet; the frames travel as items).
//!
//! Resumable: a copy killed half-way is run again and carries on. Items already in the destination
//! (same id and content) are skipped; an enrolled character already there is left alone; a user's
//! events continue after the ones the destination already holds (events are kept in time order
//! and only the copy writes them). The destination should be a fresh catalogue: one holding other
//! items under the same ids is refused.

use crate::error::{CatalogError, Result};
use crate::record::ItemVectors;
use crate::record::{ItemId, RestoredItem};
use crate::reembed::{check_one_result_per_item, ReembedItem};
use crate::storage::Storage;
use std::collections::HashSet;

/// Items read and written per batch.
const BATCH: usize = 256;

/// What [`copy_catalogue`] or [`reembed_catalogue`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Items a re-embedding copy could not embed (left out), with the reason.
    pub not_reembedded: Vec<(ItemId, String)>,
    /// Items written.
    pub items: usize,
    /// Items the destination held already (a resumed copy).
    pub already_there: usize,
    /// Enrolled characters written.
    pub enrolments: usize,
    /// Users whose events were written (wholly or the rest of them).
    pub users: usize,
    /// Events written.
    pub events: usize,
    /// Whether an open-set threshold was copied.
    pub threshold: bool,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied {} items ({} were there already), {} enrolled characters, {} events of {} users{}",
            self.items,
            self.already_there,
            self.enrolments,
            self.events,
            self.users,
            if self.threshold {
                ", the open-set threshold"
            } else {
                ""
            }
        )?;
        if !self.not_reembedded.is_empty() {
            write!(
                f,
                "; {} items could not be re-embedded and were left out",
                self.not_reembedded.len()
            )?;
        }
        Ok(())
    }
}

/// Computes an item's vectors with a new model: called with batches of items (with their
/// thumbnails, a fallback for a missing source), returns one result per item, in order.
pub type Embed<'a> =
    &'a mut dyn FnMut(&[ReembedItem]) -> Vec<std::result::Result<ItemVectors, String>>;

/// Copies everything `from` holds into `to` (see the module documentation).
pub fn copy_catalogue(
    from: &dyn Storage,
    to: &dyn Storage,
    show_progress: bool,
) -> Result<CopyReport> {
    copy(from, to, show_progress, None)
}

/// Copies `from` into `to`, a new catalogue of another model, with every item's vectors computed
/// again by `embed`: how a catalogue on any storage is re-embedded without touching the one in
/// use (a Milvus-backed one into a new collection, which the service is then pointed at). Ids,
/// records, thumbnails and users' events travel; enrolments (vector sums of the old model), the
/// open-set threshold and the copy verdict do not, as they belong to the old model (calibrate
/// again). Items `embed` cannot compute are left out and listed in the report. Resumable like
/// the plain copy; items already in `to` are not embedded again.
pub fn reembed_catalogue(
    from: &dyn Storage,
    to: &dyn Storage,
    show_progress: bool,
    embed: Embed<'_>,
) -> Result<CopyReport> {
    copy(from, to, show_progress, Some(embed))
}

fn copy(
    from: &dyn Storage,
    to: &dyn Storage,
    show_progress: bool,
    mut embed: Option<Embed<'_>>,
) -> Result<CopyReport> {
    if embed.is_none() && from.model() != to.model() {
        return Err(CatalogError::invalid(
            format!(
                "the destination holds embeddings of model {} ({}-d), the source of {} ({}-d)",
                to.model().fingerprint,
                to.model().dim,
                from.model().fingerprint,
                from.model().dim
            ),
            "copy into a new (empty) destination",
        ));
    }
    let mut report = CopyReport::default();
    let ids = from.live_ids()?;
    let bar = if show_progress {
        indicatif::ProgressBar::new(ids.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "copying {bar:40} {pos}/{len} items ({per_sec}, {eta})",
        )
        .expect("the template is valid"),
    );
    for chunk in ids.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        let stored = chunk
            .iter()
            .zip(from.vectors(chunk)?)
            .zip(from.copies(chunk)?);
        for ((&id, vector), copies) in stored {
            // An item removed while the copy runs is skipped.
            let (Some(item), Some(vector)) = (from.get(id)?, vector) else {
                continue;
            };
            if embed.is_some() && to.get(id)?.is_some() {
                report.already_there += 1;
                continue;
            }
            let thumbnail = from.thumbnail(id)?.unwrap_or_default();
            batch.push(RestoredItem {
                item,
                vector,
                thumbnail,
                copies,
            });
        }
        if let Some(embed) = embed.as_mut() {
            batch = reembedded(batch, embed, &mut report)?;
        }
        for outcome in to.add_restored(batch)? {
            if outcome.duplicate {
                report.already_there += 1;
            } else {
                report.items += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    to.settle()?;
    let enrolled: HashSet<String> = to.enrolments()?.into_iter().map(|(name, _)| name).collect();
    let of_this_model = embed.is_none();
    for (name, shots) in from.enrolments()?.into_iter().filter(|_| of_this_model) {
        if !enrolled.contains(&name) {
            to.store_enrolment(&name, &shots)?;
            report.enrolments += 1;
        }
    }
    for user in from.users()? {
        let events = from.user_events(&user)?;
        let held = to.user_events(&user)?.len();
        if held < events.len() {
            for event in &events[held..] {
                to.store_event(&user, event)?;
            }
            report.users += 1;
            report.events += events.len() - held;
        }
    }
    if let Some(verdict) = from.copy_verdict()?.filter(|_| of_this_model) {
        if to.copy_verdict()? != Some(verdict) {
            to.set_copy_verdict(&verdict)?;
        }
    }
    if let Some(threshold) = from.stored_threshold()?.filter(|_| of_this_model) {
        if to.stored_threshold()? != Some(threshold) {
            to.store_threshold(threshold)?;
            report.threshold = true;
        }
    }
    Ok(report)
}

/// `batch` with each item's vector and copy descriptors computed by `embed`; items it cannot
/// embed are left out and recorded in `report`.
fn reembedded(
    batch: Vec<RestoredItem>,
    embed: &mut Embed<'_>,
    report: &mut CopyReport,
) -> Result<Vec<RestoredItem>> {
    let inputs: Vec<ReembedItem> = batch
        .iter()
        .map(|r| ReembedItem {
            item: r.item.clone(),
            thumbnail: (!r.thumbnail.is_empty()).then(|| r.thumbnail.clone()),
        })
        .collect();
    let results = embed(&inputs);
    check_one_result_per_item(results.len(), batch.len())?;
    let mut out = Vec::with_capacity(batch.len());
    for (mut restored, result) in batch.into_iter().zip(results) {
        match result {
            Ok(vectors) => {
                restored.vector = vectors.vector;
                restored.copies = vectors.copies;
                out.push(restored);
            }
            Err(reason) => report.not_reembedded.push((restored.item.id, reason)),
        }
    }
    Ok(out)
}
