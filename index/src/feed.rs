//! Per-user feeds from stored events: a profile vector (mean of liked items minus mean of disliked
//! items), candidates near it that the user has not seen, diversified by maximal marginal relevance.
//! A user with no likes gets a cold-start feed: the most liked unseen items, topped up with random
//! ones (seeded per user and catalogue generation, so a refresh is stable), also diversified by MMR.

use crate::error::{CatalogError, Result};
use crate::filter::Filter;
use crate::record::{now_ms, Event, EventKind, Hit, ItemId};
use crate::storage::Storage;
use crate::vector::{self, dot};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// Maximal marginal relevance: picks up to `k` indices of `candidates` (relevance, normalised
/// vector), each maximising `lambda · relevance − (1 − lambda) · max cosine to those already picked`.
/// `lambda = 1` is pure relevance, `lambda = 0` pure diversity.
pub fn mmr(candidates: &[(f32, Vec<f32>)], k: usize, lambda: f32) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::new();
    let mut max_sim = vec![f32::NEG_INFINITY; candidates.len()];
    let mut taken = vec![false; candidates.len()];
    while picked.len() < k.min(candidates.len()) {
        let score = |i: usize| {
            let redundancy = if picked.is_empty() { 0.0 } else { max_sim[i] };
            lambda * candidates[i].0 - (1.0 - lambda) * redundancy
        };
        let best = (0..candidates.len())
            .filter(|&i| !taken[i])
            .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
            .expect("fewer picked than candidates");
        taken[best] = true;
        picked.push(best);
        for (i, (_, v)) in candidates.iter().enumerate() {
            if !taken[i] {
                max_sim[i] = max_sim[i].max(dot(v, &candidates[best].1));
            }
        }
    }
    picked
}

/// Stores a user event (durable when this returns). `at_ms` defaults to now.
pub(crate) fn record_event<S: Storage + ?Sized>(
    storage: &S,
    user: &str,
    item: ItemId,
    kind: EventKind,
    at_ms: Option<u64>,
) -> Result<()> {
    crate::limits::check_name("user name", user)?;
    if storage.get(item)?.is_none() {
        return Err(CatalogError::UnknownItem { id: item });
    }
    let event = Event {
        item,
        kind,
        at_ms: at_ms.unwrap_or_else(now_ms),
    };
    storage.store_event(user, &event)
}

/// Up to `k` unseen live items for `user`, diversified by MMR with trade-off `lambda` in [0, 1]
/// (0.7 is a good default). `Hit::score` is the relevance (cosine to the profile, or normalised
/// like count for cold-start users).
pub(crate) fn feed<S: Storage + ?Sized>(
    storage: &S,
    user: &str,
    k: usize,
    lambda: f32,
) -> Result<Vec<Hit>> {
    if !(0.0..=1.0).contains(&lambda) {
        return Err(CatalogError::invalid(
            format!("MMR lambda {lambda} is outside [0, 1]"),
            "pass 1 for pure relevance, 0 for pure diversity, e.g. 0.7",
        ));
    }
    let events = storage.user_events(user)?;
    let seen: HashSet<ItemId> = events.iter().map(|e| e.item).collect();
    let mut verdict: HashMap<ItemId, EventKind> = HashMap::new();
    for e in events.iter().filter(|e| e.kind != EventKind::View) {
        verdict.insert(e.item, e.kind);
    }
    let vectors_with = |kind: EventKind| -> Result<Vec<Vec<f32>>> {
        let ids: Vec<ItemId> = verdict
            .iter()
            .filter(|(_, &k)| k == kind)
            .map(|(&id, _)| id)
            .collect();
        Ok(storage.vectors(&ids)?.into_iter().flatten().collect())
    };
    let (likes, dislikes) = (
        vectors_with(EventKind::Like)?,
        vectors_with(EventKind::Dislike)?,
    );
    let profile = vector::mean(&likes).and_then(|liked| match vector::mean(&dislikes) {
        Some(disliked) => vector::normalise(
            &liked
                .iter()
                .zip(&disliked)
                .map(|(l, d)| l - d)
                .collect::<Vec<_>>(),
        ),
        None => vector::normalise(&liked),
    });
    let pool = (k * 5).max(50);
    let scored = match profile {
        Some(p) => storage.nearest(
            &p,
            pool,
            &Filter::any(),
            &seen,
            storage.ef_search().max(pool),
        )?,
        None => cold_start(storage, user, pool, &seen)?,
    };
    let ids: Vec<ItemId> = scored.iter().map(|&(id, _)| id).collect();
    let candidates: Vec<(ItemId, f32, Vec<f32>)> = scored
        .into_iter()
        .zip(storage.vectors(&ids)?)
        .filter_map(|((id, relevance), v)| Some((id, relevance, v?)))
        .collect();
    let pairs: Vec<(f32, Vec<f32>)> = candidates.iter().map(|(_, r, v)| (*r, v.clone())).collect();
    let picked = mmr(&pairs, k, lambda);
    storage.hits(
        picked
            .into_iter()
            .map(|i| (candidates[i].0, candidates[i].1))
            .collect(),
    )
}

/// Most liked unseen live items (relevance = likes / max likes), topped up with random ones.
fn cold_start<S: Storage + ?Sized>(
    storage: &S,
    user: &str,
    pool: usize,
    seen: &HashSet<ItemId>,
) -> Result<Vec<(ItemId, f32)>> {
    let generation = storage.counts().generation;
    let mut live = storage.live_ids()?;
    live.retain(|id| !seen.contains(id));
    let live_set: HashSet<ItemId> = live.iter().copied().collect();
    let mut popular: Vec<(ItemId, u64)> = storage
        .popularity()?
        .into_iter()
        .filter(|(id, n)| *n > 0 && live_set.contains(id))
        .collect();
    popular.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    popular.truncate(pool);
    let top = popular.first().map_or(1, |p| p.1) as f32;
    let mut out: Vec<(ItemId, f32)> = popular
        .iter()
        .map(|&(id, n)| (id, n as f32 / top))
        .collect();
    let chosen: HashSet<ItemId> = out.iter().map(|p| p.0).collect();
    let mut rest: Vec<ItemId> = live.into_iter().filter(|id| !chosen.contains(id)).collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (user, generation).hash(&mut hasher);
    rest.shuffle(&mut StdRng::seed_from_u64(hasher.finish()));
    out.extend(rest.into_iter().take(pool - out.len()).map(|id| (id, 0.0)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::mmr;

    #[test]
    fn mmr_trades_relevance_for_diversity() {
        let c = vec![
            (1.0, vec![1.0, 0.0]),
            (0.99, vec![1.0, 0.0]),
            (0.5, vec![0.0, 1.0]),
        ];
        assert_eq!(mmr(&c, 2, 1.0), vec![0, 1]);
        assert_eq!(mmr(&c, 2, 0.5), vec![0, 2]);
        assert_eq!(mmr(&c, 5, 0.5).len(), 3);
    }
}
