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
    fn default() -> Self {
        Self {
            max_gap: 1.0,
            cut: 0.12,
            same: 0.03,
        }
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
