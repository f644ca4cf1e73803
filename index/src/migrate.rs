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
use crate::record::RestoredItem;
use crate::storage::Storage;
use std::collections::HashSet;

/// Items read and written per batch.
const BATCH: usize = 256;

/// What [`copy_catalogue`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
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
        )
    }
}

/// Copies everything `from` holds into `to` (see the module documentation).
pub fn copy_catalogue(
    from: &dyn Storage,
    to: &dyn Storage,
    show_progress: bool,
) -> Result<CopyReport> {
    if from.model() != to.model() {
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
            let thumbnail = from.thumbnail(id)?.unwrap_or_default();
            batch.push(RestoredItem {
                item,
                vector,
                thumbnail,
                copies,
            });
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
    for (name, shots) in from.enrolments()? {
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
    if let Some(verdict) = from.copy_verdict()? {
        if to.copy_verdict()? != Some(verdict) {
            to.set_copy_verdict(&verdict)?;
        }
    }
    if let Some(threshold) = from.stored_threshold()? {
        if to.stored_threshold()? != Some(threshold) {
            to.store_threshold(threshold)?;
            report.threshold = true;
        }
    }
    Ok(report)
}
