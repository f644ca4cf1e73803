//! The embedded catalogue's centroid table: computed on first use from the store (the vectors of
//! the items at the primary level, plus enrolments) and cached in the index state, where
//! `catalog.rs`'s writes keep it current; enrolments are stored and merged into it here.

use crate::catalog::{lock, Catalog, IndexState};
use crate::centroids::CentroidTable;
use crate::error::Result;
use crate::record::PRIMARY_LEVEL;
use crate::vector::VectorSum;

/// Sums of the live items of each character, plus enrolled shots.
fn compute_table(cat: &Catalog, st: &IndexState) -> Result<CentroidTable> {
    let mut table = CentroidTable::default();
    for (name, _) in st.postings.values_at(PRIMARY_LEVEL) {
        let ids = st
            .postings
            .with_label(PRIMARY_LEVEL, &name)
            .into_iter()
            .flatten();
        for &id in ids {
            if let Some(v) = cat.store()?.vector(id)? {
                table.add(&name, &v);
            }
        }
    }
    for (name, sum) in cat.store()?.enrolled()? {
        table.merge(&name, &sum);
    }
    Ok(table)
}

impl Catalog {
    /// Runs `f` on the centroid table, computing it first if needed.
    fn with_table<R>(&self, f: impl FnOnce(&CentroidTable) -> R) -> Result<R> {
        let st = self.read_state();
        let mut cached = lock(&st.centroids);
        if cached.is_none() {
            *cached = Some(compute_table(self, &st)?);
        }
        Ok(f(cached.as_ref().expect("just computed")))
    }

    /// Every character (live items at the primary level, or enrolled) with its normalised centroid.
    pub fn character_centroids(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.with_table(CentroidTable::centroids)
    }

    /// Stores enrolment shots (normalised vectors) and merges them into the cached table.
    pub(crate) fn store_enrolment(&self, name: &str, shots: &VectorSum) -> Result<usize> {
        let _writer = self.begin_write()?;
        let total = self.store()?.enroll(name, shots)?;
        let mut st = self.write_state();
        if let Some(table) = st
            .centroids
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            table.merge(name, shots);
        }
        Ok(total.count)
    }
}
