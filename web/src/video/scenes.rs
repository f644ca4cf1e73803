//! Which decoded frames a video keeps. Like trace.moe, every frame is decoded but only some are
//! stored: a frame is kept when the picture changes (a cut: its signature is far from the current
//! scene's kept frame), or when [`SceneSettings::max_gap`] seconds have passed since the last kept
//! frame and the picture has moved on (a pan or slow change); a frame that is still nearly the kept
//! one only extends the scene, so a static shot of any length is one scene with from/to times.
//! Signatures are 16×16 greyscale thumbnails in [0, 1], compared by mean absolute difference.

use super::ffmpeg::Frame;
use image::imageops::{self, FilterType};
use image::RgbImage;

/// Side of the greyscale signature.
const SIGNATURE_SIDE: u32 = 16;

/// When to start a new scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneSettings {
    /// Seconds after which a changed picture is kept even without a cut.
    pub max_gap: f64,
    /// Difference (mean absolute, 0..1) to the kept frame that is a cut at once.
    pub cut: f32,
    /// Difference below which a frame is still the kept picture (the scene only grows).
    pub same: f32,
}

impl Default for SceneSettings {
    /// A cut at 0.12 (different pictures differ by 0.15–0.4; one still with compression noise by
    /// under 0.01); "the same picture" below 0.02 (the noise, not a pan).
    fn default() -> Self {
        SceneSettings {
            max_gap: 1.0,
            cut: 0.12,
            same: 0.02,
        }
    }
}

/// A kept frame and the stretch of video it stands for.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Time of the scene's first frame, seconds.
    pub from: f64,
    /// Time of the kept frame (the scene's first), seconds.
    pub at: f64,
    /// Time of the scene's last frame plus one frame's duration, seconds.
    pub to: f64,
    /// The kept frame.
    pub frame: RgbImage,
}

/// The scene being built.
struct Open {
    scene: Scene,
    signature: Vec<f32>,
    last: f64,
}

/// Turns a stream of frames into scenes.
pub struct SceneSampler {
    settings: SceneSettings,
    open: Option<Open>,
    /// Spacing of the last two frames (the duration of a frame), seconds.
    step: f64,
}

/// The greyscale signature of a frame.
fn signature(img: &RgbImage) -> Vec<f32> {
    let grey = imageops::grayscale(img);
    imageops::resize(&grey, SIGNATURE_SIDE, SIGNATURE_SIDE, FilterType::Triangle)
        .into_raw()
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect()
}

/// Mean absolute difference of two signatures.
fn difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32
}

impl SceneSampler {
    /// A sampler with `settings`.
    pub fn new(settings: SceneSettings) -> Self {
        SceneSampler {
            settings,
            open: None,
            step: 0.0,
        }
    }

    /// Takes the next frame (in time order); returns the scene it closes, if any.
    pub fn push(&mut self, frame: Frame) -> Option<Scene> {
        let sig = signature(&frame.image);
        let Some(open) = self.open.as_mut() else {
            self.start(frame, sig);
            return None;
        };
        if frame.time > open.last {
            self.step = frame.time - open.last;
        }
        let d = difference(&sig, &open.signature);
        let gap = frame.time - open.scene.at;
        let new_scene =
            d >= self.settings.cut || (gap >= self.settings.max_gap && d >= self.settings.same);
        if !new_scene {
            open.last = frame.time;
            return None;
        }
        let closed = self.close(frame.time);
        self.start(frame, sig);
        closed
    }

    /// Closes the last scene.
    pub fn finish(mut self) -> Option<Scene> {
        let end = self.open.as_ref()?.last + self.step;
        self.close(end)
    }

    /// Closes the open scene at `end`.
    fn close(&mut self, end: f64) -> Option<Scene> {
        self.open.take().map(|mut open| {
            open.scene.to = end.max(open.scene.from);
            open.scene
        })
    }

    /// Opens a scene at `frame`.
    fn start(&mut self, frame: Frame, signature: Vec<f32>) {
        self.open = Some(Open {
            scene: Scene {
                from: frame.time,
                at: frame.time,
                to: frame.time,
                frame: frame.image,
            },
            signature,
            last: frame.time,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const FPS: f64 = 30.0;

    /// A picture: a gradient whose direction and colours depend on `seed`, shifted by `dx` pixels.
    fn picture(seed: u32, dx: u32) -> RgbImage {
        RgbImage::from_fn(128, 96, |x, y| {
            let x = x + dx;
            let v = match seed % 3 {
                0 => x * 2,
                1 => y * 2 + 40,
                _ => (x + y) % 64 * 4,
            };
            Rgb([
                (v + seed * 50) as u8,
                (v / 2) as u8,
                (255 - v.min(255)) as u8,
            ])
        })
    }

    /// `img` with ±`amount` of deterministic noise (like compression).
    fn noisy(img: &RgbImage, n: u32, amount: i32) -> RgbImage {
        RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y);
            let r = ((x * 7 + y * 13 + n * 31) % (2 * amount as u32 + 1)) as i32 - amount;
            Rgb(p.0.map(|c| (c as i32 + r).clamp(0, 255) as u8))
        })
    }

    fn run(frames: impl IntoIterator<Item = RgbImage>) -> Vec<Scene> {
        let mut sampler = SceneSampler::new(SceneSettings::default());
        let mut out = Vec::new();
        for (i, image) in frames.into_iter().enumerate() {
            let frame = Frame {
                time: i as f64 / FPS,
                image,
            };
            out.extend(sampler.push(frame));
        }
        out.extend(sampler.finish());
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1.0 / FPS + 1e-9
    }

    #[test]
    fn three_stills_are_three_scenes_with_their_times() {
        let frames = (0..3).flat_map(|s| {
            let still = picture(s, 0);
            (0..60).map(move |n| noisy(&still, n, 4))
        });
        let scenes = run(frames);
        assert_eq!(scenes.len(), 3);
        for (i, s) in scenes.iter().enumerate() {
            let start = 2.0 * i as f64;
            assert!(
                close(s.from, start) && close(s.to, start + 2.0),
                "{i}: {}–{}",
                s.from,
                s.to
            );
            assert_eq!(s.at, s.from);
        }
    }

    #[test]
    fn a_long_static_shot_is_one_scene() {
        let still = picture(1, 0);
        let scenes = run((0..300).map(|n| noisy(&still, n, 3)));
        assert_eq!(scenes.len(), 1);
        assert!(close(scenes[0].to, 10.0));
    }

    #[test]
    fn a_pan_keeps_about_a_frame_a_second() {
        let scenes = run((0..90).map(|n| picture(0, n)));
        assert!((3..=4).contains(&scenes.len()), "{} scenes", scenes.len());
        for pair in scenes.windows(2) {
            assert!(pair[1].from - pair[0].from <= 1.0 + 1e-9);
            assert!(close(pair[0].to, pair[1].from));
        }
    }

    #[test]
    fn one_frame_is_one_scene() {
        let scenes = run([picture(2, 0)]);
        assert_eq!(scenes.len(), 1);
        assert_eq!((scenes[0].from, scenes[0].to), (0.0, 0.0));
    }
}
