//! The bounded inference pool: the network never runs on the async executor. Requests queue jobs
//! (all images of one request form one job) on a bounded channel; worker threads take a job plus
//! whatever else is waiting, up to `max_batch` images, and run them through the network as one
//! batch. A full queue is answered at once with [`Busy`] (the API turns it into 503 + Retry-After).
//! Jobs carry encoded uploads (decoded by the worker, off the executor) or images the caller has
//! already decoded (video frames, pictures whose thumbnails the caller makes), never re-encoded.

use actix_web::web::Bytes;
use animelens_models::embedder::predict_decoded;
use animelens_models::{CopyViews, EmbedError, Embedder, Prediction};
use image::RgbImage;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One image's prediction or why it failed.
pub type PredictResult = Result<Prediction, EmbedError>;

/// The queue is full; retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the inference queue is full")]
pub struct Busy;

/// One image of a job: as uploaded, or already decoded.
pub enum PoolImage {
    /// Encoded bytes, decoded by the worker with the embedder's limits.
    Encoded(Bytes),
    /// A decoded image.
    Decoded(RgbImage),
}

impl From<Bytes> for PoolImage {
    fn from(bytes: Bytes) -> Self {
        PoolImage::Encoded(bytes)
    }
}

impl From<RgbImage> for PoolImage {
    fn from(image: RgbImage) -> Self {
        PoolImage::Decoded(image)
    }
}

/// Images waiting for the network, and where to send their predictions.
struct Job {
    images: Vec<PoolImage>,
    top_k: usize,
    /// Also compute the copy descriptors of these views (into `Prediction::copies`).
    copies: Option<CopyViews>,
    reply: oneshot::Sender<Vec<PredictResult>>,
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Jobs waiting in the queue.
    pub queued: AtomicUsize,
    /// Network calls made.
    pub batches: AtomicU64,
    /// Images run through the network.
    pub images: AtomicU64,
    /// Jobs refused because the queue was full.
    pub rejected: AtomicU64,
}

/// A fixed set of worker threads fed by a bounded queue. Cheap to clone.
#[derive(Clone)]
pub struct InferencePool {
    tx: SyncSender<Job>,
    stats: Arc<PoolStats>,
    embedder: Arc<dyn Embedder>,
}

impl InferencePool {
    /// Starts `workers` threads over `embedder`, with room for `capacity` waiting jobs.
    pub fn start(
        embedder: Arc<dyn Embedder>,
        workers: usize,
        capacity: usize,
        max_batch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(PoolStats::default());
        for n in 0..workers.max(1) {
            let (rx, stats, embedder) = (rx.clone(), stats.clone(), embedder.clone());
            std::thread::Builder::new()
                .name(format!("inference-{n}"))
                .spawn(move || work(&rx, &stats, embedder.as_ref(), max_batch.max(1)))
                .expect("spawn inference worker");
        }
        InferencePool {
            tx,
            stats,
            embedder,
        }
    }

    /// The embedder behind the pool (for its dimension, heads and fingerprint).
    pub fn embedder(&self) -> &dyn Embedder {
        self.embedder.as_ref()
    }

    /// Counters for the metrics endpoint.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Predicts `images` (one result per image, in order) without blocking the caller's thread;
    /// refuses at once when the queue is full.
    pub async fn predict(
        &self,
        images: Vec<PoolImage>,
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> Result<Vec<PredictResult>, Busy> {
        let (reply, rx) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Job {
            images,
            top_k,
            copies,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Busy);
            }
        }
        rx.await.map_err(|_| Busy)
    }

    /// Like [`InferencePool::predict`] but waits for room in the queue; for callers outside the
    /// async executor (the gallery ingestion at start-up).
    pub fn predict_blocking(
        &self,
        images: Vec<PoolImage>,
        top_k: usize,
        copies: Option<CopyViews>,
    ) -> Vec<PredictResult> {
        let count = images.len();
        let (reply, rx) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.send(Job {
            images,
            top_k,
            copies,
            reply,
        });
        let lost = || {
            (0..count)
                .map(|_| Err(EmbedError::Inference("inference worker stopped".into())))
                .collect()
        };
        if sent.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return lost();
        }
        rx.blocking_recv().unwrap_or_else(|_| lost())
    }
}

/// A worker's loop: take a job and the jobs behind it up to `max_batch` images, run, reply.
fn work(rx: &Mutex<Receiver<Job>>, stats: &PoolStats, embedder: &dyn Embedder, max_batch: usize) {
    loop {
        let jobs = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Ok(first) = rx.recv() else { return };
            let mut images = first.images.len();
            let mut jobs = vec![first];
            while images < max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        images += job.images.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        stats.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        // Jobs asking for the same copy views run as one network call.
        let mut groups: Vec<(Option<CopyViews>, Vec<Job>)> = Vec::new();
        for job in jobs {
            match groups.iter_mut().find(|(views, _)| *views == job.copies) {
                Some((_, group)) => group.push(job),
                None => groups.push((job.copies, vec![job])),
            }
        }
        for (views, group) in groups {
            run_group(embedder, stats, views, group);
        }
    }
}

/// Decodes and predicts the images of jobs that want the same copy views, then replies to each.
fn run_group(embedder: &dyn Embedder, stats: &PoolStats, views: Option<CopyViews>, jobs: Vec<Job>) {
    let top_k = jobs.iter().map(|j| j.top_k).max().unwrap_or(1);
    let mut counts = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let mut images = Vec::new();
    for job in jobs {
        counts.push((job.images.len(), job.top_k));
        replies.push(job.reply);
        images.extend(job.images);
    }
    stats
        .images
        .fetch_add(images.len() as u64, Ordering::Relaxed);
    let total = images.len();
    let results = catch_unwind(AssertUnwindSafe(|| {
        let decoded = images
            .into_iter()
            .map(|image| match image {
                PoolImage::Encoded(bytes) => embedder.decode(&bytes),
                PoolImage::Decoded(image) => Ok(image),
            })
            .collect();
        predict_decoded(embedder, decoded, top_k, views)
    }))
    .unwrap_or_else(|_| {
        tracing::error!("the embedder panicked on a batch of {total} images");
        (0..total)
            .map(|_| Err(EmbedError::Inference("the network panicked".into())))
            .collect()
    });
    let mut results = results.into_iter();
    for ((count, job_top_k), reply) in counts.into_iter().zip(replies) {
        let mine: Vec<PredictResult> = results
            .by_ref()
            .take(count)
            .map(|r| {
                r.map(|mut p| {
                    p.heads.iter_mut().for_each(|h| h.top.truncate(job_top_k));
                    p
                })
            })
            .collect();
        // The requester may have gone away (client disconnected): nothing to do then.
        let _ = reply.send(mine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    /// Deterministic embedder: the vector is the first bytes of the image; blocks each batch until
    /// the test releases it, and reports batch sizes.
    struct GatedEmbedder {
        gate: Mutex<Receiver<()>>,
        sizes: Mutex<Sender<usize>>,
    }

    impl Embedder for GatedEmbedder {
        fn dim(&self) -> usize {
            2
        }
        fn fingerprint(&self) -> String {
            "fake".into()
        }
        fn heads(&self) -> Vec<String> {
            vec!["character".into()]
        }
        /// The "image" is one pixel whose red value is the first byte.
        fn decode(&self, bytes: &[u8]) -> Result<RgbImage, EmbedError> {
            match bytes.first() {
                Some(&x) => Ok(RgbImage::from_pixel(1, 1, image::Rgb([x, 0, 0]))),
                None => Err(EmbedError::Decode("empty".into())),
            }
        }
        fn predict_images(
            &self,
            images: &[RgbImage],
            _top_k: usize,
            _copies: Option<CopyViews>,
        ) -> Result<Vec<Prediction>, EmbedError> {
            self.sizes.lock().unwrap().send(images.len()).unwrap();
            self.gate.lock().unwrap().recv().unwrap();
            Ok(images
                .iter()
                .map(|img| Prediction {
                    copies: Vec::new(),
                    heads: Vec::new(),
                    embedding: vec![img.get_pixel(0, 0)[0] as f32, 1.0],
                })
                .collect())
        }
    }

    #[actix_web::test]
    async fn full_queue_is_busy_and_waiting_jobs_are_batched() {
        let (open, gate) = channel();
        let (sizes_tx, sizes) = channel();
        let embedder = Arc::new(GatedEmbedder {
            gate: Mutex::new(gate),
            sizes: Mutex::new(sizes_tx),
        });
        let pool = InferencePool::start(embedder, 1, 2, 8);
        // Waits for the next batch size without blocking the test's single-threaded executor.
        let next_batch = || async {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(n) = sizes.try_recv() {
                    return n;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no batch reached the network"
                );
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let job = |b: u8| {
            let pool = pool.clone();
            async move {
                pool.predict(vec![Bytes::from(vec![b]).into()], 1, None)
                    .await
            }
        };
        // The worker takes the first job and blocks in the network.
        let first = actix_web::rt::spawn(job(1));
        assert_eq!(next_batch().await, 1);
        // Two more fill the queue; the next is refused at once.
        let second = actix_web::rt::spawn(job(2));
        let third = actix_web::rt::spawn(job(3));
        while pool.stats().queued.load(Ordering::Relaxed) < 2 {
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(job(4).await.unwrap_err(), Busy);
        assert_eq!(pool.stats().rejected.load(Ordering::Relaxed), 1);
        open.send(()).unwrap();
        // The two waiting jobs go through the network together.
        assert_eq!(next_batch().await, 2);
        open.send(()).unwrap();
        let embedding = |r: Vec<PredictResult>| r[0].as_ref().unwrap().embedding[0];
        assert_eq!(embedding(first.await.unwrap().unwrap()), 1.0);
        assert_eq!(embedding(second.await.unwrap().unwrap()), 2.0);
        assert_eq!(embedding(third.await.unwrap().unwrap()), 3.0);
        assert_eq!(pool.stats().batches.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats().queued.load(Ordering::Relaxed), 0);
    }
}
