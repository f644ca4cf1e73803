//! Which decoded frames to keep. Like trace.moe, every frame is decoded but only a few are
//! stored: a frame starts a new scene when the picture changes sharply, or when the scene has run
//! `max_gap` seconds and the picture has drifted since the scene's first frame. A still shot of
//! any length stays one scene with from/to times, so the index holds one entry for it.

use image::imageops::{self, FilterType};
use image::RgbImage;

use super::ffmpeg::Frame;

/// Side of the greyscale signature that frames are compared by.
const SIGNATURE_SIDE: u32 = 16;

/// How scenes are cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneSettings {
    /// Seconds after the last kept frame at which the picture is checked for drift.
    pub max_gap: f64,
    /// Difference from the scene's first frame above which a new scene starts at once.
    pub cut: f32,
    /// Difference below which a frame checked after `max_gap` still belongs to the scene.
    pub same: f32,
}

impl Default for SceneSettings {
    /// Measured on decoded H.264/MJPEG footage at 256 px: hard cuts between different pictures
    /// differ by 0.05–0.41 (most above 0.12), so `cut` 0.10 catches those at once and the rare
    /// low-contrast cut at the next `max_gap` check. A still with heavy grain stays under 0.007
    /// and the slowest pan or zoom drifts 0.014 a second, so `same` 0.01 sits between them.
    /// Frame-to-frame change in pans and fades stays under 0.012, far below `cut`.
    fn default() -> Self {
        let (max_gap, cut, same) = (1.0, 0.10, 0.01);
        Self { max_gap, cut, same }
    }
}

/// A run of frames shown as one picture.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Time of the scene's first frame, seconds.
    pub from: f64,
    /// Time of the kept frame (the first one), seconds.
    pub at: f64,
    /// Time of the scene's last frame plus one frame duration, seconds.
    pub to: f64,
    /// The kept frame.
    pub frame: RgbImage,
}

/// The scene being built.
struct Open {
    scene: Scene,
    signature: Vec<f32>,
    /// Time of the last frame checked for drift (or of the first frame).
    checked: f64,
    /// Time of the scene's last frame so far.
    last: f64,
}

/// Turns a stream of frames into scenes; push every frame in order, then call `finish`.
pub struct SceneSampler {
    settings: SceneSettings,
    open: Option<Open>,
    /// The latest spacing between two frames, seconds: the estimated frame duration.
    spacing: f64,
}

impl SceneSampler {
    /// A sampler with the given settings.
    pub fn new(settings: SceneSettings) -> Self {
        Self {
            settings,
            open: None,
            spacing: 0.0,
        }
    }

    /// Takes the next frame; returns the previous scene when this frame starts a new one.
    pub fn push(&mut self, frame: Frame) -> Option<Scene> {
        let signature = signature(&frame.image);
        let Some(open) = &mut self.open else {
            self.open = Some(start(frame, signature));
            return None;
        };
        if frame.time > open.last {
            self.spacing = frame.time - open.last;
        }
        let diff = difference(&signature, &open.signature);
        let due = frame.time - open.checked >= self.settings.max_gap;
        if diff <= self.settings.cut && !(due && diff >= self.settings.same) {
            open.last = frame.time;
            if due {
                open.checked = frame.time;
            }
            return None;
        }
        let closed = self.open.replace(start(frame, signature));
        closed.map(|open| close(open, self.spacing))
    }

    /// Closes the last scene; `None` if no frame was pushed.
    pub fn finish(self) -> Option<Scene> {
        self.open.map(|open| close(open, self.spacing))
    }
}

fn start(frame: Frame, signature: Vec<f32>) -> Open {
    let time = frame.time;
    let scene = Scene {
        from: time,
        at: time,
        to: time,
        frame: frame.image,
    };
    Open {
        scene,
        signature,
        checked: time,
        last: time,
    }
}

fn close(open: Open, spacing: f64) -> Scene {
    Scene {
        to: open.last + spacing,
        ..open.scene
    }
}

/// A small greyscale copy with values in [0, 1].
fn signature(image: &RgbImage) -> Vec<f32> {
    let grey = imageops::grayscale(image);
    let small = imageops::resize(&grey, SIGNATURE_SIDE, SIGNATURE_SIDE, FilterType::Triangle);
    small
        .into_raw()
        .into_iter()
        .map(|v| f32::from(v) / 255.0)
        .collect()
}

/// Mean absolute difference of two signatures, in [0, 1].
fn difference(a: &[f32], b: &[f32]) -> f32 {
    let total: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
    total / a.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const FPS: f64 = 30.0;

    /// A smooth picture that differs with `seed`, seen from `dx` pixels to the right.
    fn picture(seed: u32, dx: u32) -> RgbImage {
        let s = f64::from(seed);
        RgbImage::from_fn(160, 90, |x, y| {
            let (x, y) = (f64::from(x + dx), f64::from(y));
            let wave = (x / (6.0 + 3.0 * s) + s).sin() + (y / 9.0 - 2.0 * s).cos();
            let v = 128.0 + 60.0 * wave;
            Rgb([v as u8, (255.0 - v) as u8, (v / 2.0 + 40.0 * s) as u8])
        })
    }

    /// `image` with ±`amount` of noise that changes with every frame `n`.
    fn noisy(image: &RgbImage, n: u32, amount: u32) -> RgbImage {
        let mut out = image.clone();
        for (i, value) in out.iter_mut().enumerate() {
            let hash = (i as u32 ^ n.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x85EB_CA6B) >> 16;
            let noisy = u32::from(*value) + hash % (2 * amount + 1);
            *value = noisy.saturating_sub(amount).min(255) as u8;
        }
        out
    }

    fn scenes(images: impl IntoIterator<Item = RgbImage>) -> Vec<Scene> {
        let mut sampler = SceneSampler::new(SceneSettings::default());
        let frames = images.into_iter().enumerate();
        let frames = frames.map(|(i, image)| Frame {
            time: i as f64 / FPS,
            image,
        });
        let mut out: Vec<Scene> = frames.filter_map(|f| sampler.push(f)).collect();
        out.extend(sampler.finish());
        out
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1.0 / FPS + 1e-9
    }

    #[test]
    fn three_stills_are_three_scenes_with_their_times() {
        let stills = (0..3).flat_map(|seed| (0..60).map(move |_| picture(seed, 0)));
        let found = scenes(stills);
        assert_eq!(found.len(), 3);
        for (scene, start) in found.iter().zip([0.0, 2.0, 4.0]) {
            assert!(
                near(scene.from, start) && near(scene.to, start + 2.0),
                "{scene:?}"
            );
            assert_eq!(
                (scene.at, scene.frame.dimensions()),
                (scene.from, (160, 90))
            );
        }
    }

    #[test]
    fn a_pan_gives_about_a_scene_a_second() {
        let found = scenes((0..90).map(|n| picture(1, n / 3)));
        assert!((3..=4).contains(&found.len()), "{} scenes", found.len());
        for pair in found.windows(2) {
            assert!(pair[1].from - pair[0].from <= 1.0 + 1e-9);
            assert_eq!(pair[0].to, pair[1].from);
        }
    }

    #[test]
    fn a_static_shot_is_one_scene() {
        let found = scenes((0..300).map(|_| picture(2, 0)));
        assert_eq!(found.len(), 1);
        assert!(near(found[0].from, 0.0) && near(found[0].to, 10.0));
    }

    #[test]
    fn noise_does_not_split_a_still() {
        let still = picture(0, 0);
        let found = scenes((0..300).map(|n| noisy(&still, n, 12)));
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn one_frame_is_one_scene() {
        let found = scenes([picture(0, 0)]);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].from, found[0].at, found[0].to), (0.0, 0.0, 0.0));
        assert!(SceneSampler::new(SceneSettings::default())
            .finish()
            .is_none());
    }
}
