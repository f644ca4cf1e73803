//! A picture on its way into the catalogue: decoded once, with its own pixel size and content
//! hash, and the item it becomes once embedded (a JPEG thumbnail of [`THUMBNAIL_SIZE`] made from
//! the decoded image).

use super::embed::EmbedImages;
use animelens_index::{NewItem, VideoFrame};
use animelens_models::preprocess::{dimensions, jpeg_thumbnail, ImageError};
use animelens_models::{CopyViews, EmbedError, Prediction};
use image::RgbImage;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Longest side of stored thumbnails, in pixels (the UI's result cards and scene previews).
pub const THUMBNAIL_SIZE: u32 = 192;

/// JPEG quality of stored thumbnails.
const THUMBNAIL_QUALITY: u8 = 85;

/// What the caller says about a picture.
#[derive(Debug, Clone, Default)]
pub struct ItemMeta {
    /// Where the picture came from (a path, URL or upload name).
    pub source: String,
    /// Label per level.
    pub labels: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Where in a video the picture is, for a video frame.
    pub frame: Option<VideoFrame>,
}

/// A decoded picture.
#[derive(Debug, Clone)]
pub struct Picture {
    /// The decoded image (shrunk to the working size by decoding).
    pub image: RgbImage,
    /// The picture's own width, before shrinking.
    pub width: u32,
    /// The picture's own height, before shrinking.
    pub height: u32,
    /// Hex content hash: SHA-256 of the file's bytes, or the caller's identity for a frame.
    pub content_hash: String,
}

impl Picture {
    /// Decodes an encoded picture with the model's limits; `content_hash` is the caller's
    /// `preprocess::content_hash` of `bytes` (callers that skip duplicates have it already).
    pub fn decode(
        bytes: &[u8],
        content_hash: String,
        embedder: &dyn EmbedImages,
    ) -> Result<Picture, EmbedError> {
        let (width, height) = dimensions(bytes)?;
        Ok(Picture {
            image: embedder.decode(bytes)?,
            width,
            height,
            content_hash,
        })
    }

    /// A picture that was never encoded (a video frame), identified by `content_hash`.
    pub fn decoded(image: RgbImage, content_hash: String) -> Picture {
        let (width, height) = image.dimensions();
        Picture {
            image,
            width,
            height,
            content_hash,
        }
    }

    /// The catalogue item for this picture with its `prediction` (embedding and copy views).
    pub fn into_item(self, meta: ItemMeta, prediction: Prediction) -> Result<NewItem, ImageError> {
        Ok(NewItem {
            source: meta.source,
            labels: meta.labels,
            tags: meta.tags,
            width: self.width,
            height: self.height,
            content_hash: self.content_hash,
            thumbnail: jpeg_thumbnail(&self.image, THUMBNAIL_SIZE, THUMBNAIL_QUALITY)?,
            vector: prediction.embedding,
            copies: prediction.copies,
            frame: meta.frame,
        })
    }
}

/// Embeds `pictures` as one batch with the copy descriptors of `views` and builds their items;
/// one result per picture, in order, the error saying why it cannot be added.
pub fn embed_items(
    embedder: &dyn EmbedImages,
    pictures: Vec<(Picture, ItemMeta)>,
    views: CopyViews,
) -> Vec<Result<NewItem, String>> {
    let images = pictures.iter().map(|(p, _)| p.image.clone()).collect();
    let predictions = embedder.embed(images, Some(views));
    pictures
        .into_par_iter()
        .zip(predictions)
        .map(|((picture, meta), prediction)| {
            let prediction = prediction.map_err(|e| e.to_string())?;
            picture
                .into_item(meta, prediction)
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The items of pictures already predicted (thumbnails made in parallel); fails with the first
/// picture that cannot be made into an item.
pub fn items_of(described: Vec<(Picture, ItemMeta, Prediction)>) -> Result<Vec<NewItem>, String> {
    described
        .into_par_iter()
        .map(|(picture, meta, prediction)| {
            picture
                .into_item(meta, prediction)
                .map_err(|e| e.to_string())
        })
        .collect()
}
