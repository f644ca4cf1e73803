//! Video decoding by running the `ffmpeg` and `ffprobe` programs, so that every container and
//! codec ffmpeg knows can be indexed without linking its libraries. Frames come out of ffmpeg's
//! stdout as raw RGB, already scaled down; their times come from the `showinfo` filter on stderr.
//! ffmpeg's own error lines (with paths reduced to the file name) become the error messages.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};

use image::RgbImage;
use serde_json::Value;

/// Options of every ffmpeg run: no keyboard, no progress lines, two threads.
const FFMPEG: &str = "-nostdin -nostats -threads 2";
/// How many distinct ffmpeg error lines an error message carries.
const MAX_ERROR_LINES: usize = 3;
/// How many error lines the stderr reader keeps (corrupt streams can log thousands).
const KEPT_LINES: usize = 100;
/// Longest preview clip, seconds.
const MAX_CLIP_SECS: f64 = 10.0;
/// Shortest preview clip, seconds.
const MIN_CLIP_SECS: f64 = 0.1;

/// What went wrong reading a video.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// The `ffmpeg` or `ffprobe` program could not be started.
    #[error("ffmpeg was not found: install it (Debian: apt-get install ffmpeg) or put it on PATH")]
    FfmpegMissing,
    /// The input file does not exist.
    #[error("{file} does not exist: check the file name and path")]
    NotFound {
        /// The file's name.
        file: String,
    },
    /// The input has no video stream (audio only, subtitles, ...).
    #[error("{file} has no video stream: give a video file (any container/codec ffmpeg reads)")]
    NoVideoStream {
        /// The file's name.
        file: String,
    },
    /// The input is unreadable, truncated or corrupt.
    #[error("{file} could not be decoded ({message}): it is damaged, truncated or not a video; re-download or re-encode it")]
    Decode {
        /// The file's name.
        file: String,
        /// ffmpeg's first error lines, or what was wrong with its output.
        message: String,
    },
    /// A time outside the video was asked for.
    #[error("{time} s is outside {file}, which is {duration:.2} s long: give a time within it")]
    OutOfRange {
        /// The file's name.
        file: String,
        /// The time asked for, seconds.
        time: f64,
        /// The video's duration, seconds.
        duration: f64,
    },
    /// The network failed on a decoded frame.
    #[error("the network failed on a frame: {0}")]
    Embed(String),
    /// Reading from or waiting for ffmpeg failed.
    #[error("talking to ffmpeg failed: {0}; retry, and check that the machine has free memory and processes")]
    Io(#[from] io::Error),
}

/// A video stream's geometry and timing, from ffprobe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Duration in seconds, 0 if unknown.
    pub duration: f64,
    /// Average frame rate, 0 if unknown.
    pub fps: f64,
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Presentation time, seconds from the start.
    pub time: f64,
    /// The picture, scaled down.
    pub image: RgbImage,
}

/// Reads the first video stream's size, duration and frame rate.
pub fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    let file = file_name(path);
    if !path.try_exists()? {
        return Err(VideoError::NotFound { file });
    }
    let entries = "stream=width,height,avg_frame_rate,duration:format=duration";
    let after = format!("-select_streams v:0 -of json -show_entries {entries}");
    let out = run("ffprobe", "-loglevel level+error", path, &after)?;
    let json: Value = serde_json::from_slice(&out)
        .map_err(|e| decode_error(path, format!("ffprobe's answer was not understood: {e}")))?;
    let stream = &json["streams"][0];
    let side = |key: &str| stream[key].as_u64().and_then(|v| u32::try_from(v).ok());
    let (Some(width @ 1..), Some(height @ 1..)) = (side("width"), side("height")) else {
        return Err(VideoError::NoVideoStream { file });
    };
    let secs = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .filter(|d: &f64| *d > 0.0)
    };
    let duration = secs(&stream["duration"]).or_else(|| secs(&json["format"]["duration"]));
    let fps = stream["avg_frame_rate"].as_str().and_then(parse_rate);
    let (duration, fps) = (duration.unwrap_or(0.0), fps.unwrap_or(0.0));
    Ok(VideoInfo {
        width,
        height,
        duration,
        fps,
    })
}

/// Decodes every frame of the first video stream, scaled so its longer side is at most
/// `max_side` (aspect ratio kept, even sizes, never upscaled).
pub fn decode(path: &Path, max_side: u32) -> Result<FrameReader, VideoError> {
    let info = probe(path)?;
    let size = scaled_size(info.width, info.height, max_side);
    // Skipping H.264's loop filter decodes ~10% faster; at thumbnail size it is invisible.
    let before = format!("{FFMPEG} -loglevel repeat+level+info -skip_loop_filter all");
    let vf = format!("{},showinfo", scale(size));
    let after = format!("-map 0:v:0 -vf {vf} -fps_mode passthrough -pix_fmt rgb24 -f rawvideo -");
    let mut cmd = command("ffmpeg", &before, path, &after);
    let spawned = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = spawned.map_err(spawn_error)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("ffmpeg's pipes were not opened").into());
    };
    let (tx, times) = mpsc::channel();
    let stderr = Some(read_stderr(stderr, tx));
    let frame_secs = if info.fps > 0.0 { 1.0 / info.fps } else { 0.0 };
    let (path, guess, done) = (path.to_path_buf(), 0.0, false);
    Ok(FrameReader {
        info,
        child,
        stdout,
        times,
        stderr,
        size,
        frame_secs,
        guess,
        path,
        done,
    })
}

/// Decodes one frame at `time` seconds, scaled like [`decode`].
pub fn frame_at(path: &Path, time: f64, max_side: u32) -> Result<RgbImage, VideoError> {
    let info = probe(path)?;
    check_time(path, &info, time)?;
    let (width, height) = scaled_size(info.width, info.height, max_side);
    let before = format!("{FFMPEG} -loglevel level+error -ss {time}");
    let vf = scale((width, height));
    let after = format!("-map 0:v:0 -frames:v 1 -vf {vf} -pix_fmt rgb24 -f rawvideo -");
    let out = run("ffmpeg", &before, path, &after)?;
    if out.is_empty() {
        // After the last frame but before the container's end.
        return Err(out_of_range(path, &info, time));
    }
    RgbImage::from_raw(width, height, out)
        .ok_or_else(|| decode_error(path, format!("ffmpeg gave no whole frame at {time} s")))
}

/// Cuts a silent MP4 preview from `from` to `to` seconds (at most 10 s, at least 0.1 s), scaled
/// like [`decode`]; fragmented so that it streams from a pipe.
pub fn cut_clip(path: &Path, from: f64, to: f64, max_side: u32) -> Result<Vec<u8>, VideoError> {
    let info = probe(path)?;
    check_time(path, &info, from)?;
    let vf = scale(scaled_size(info.width, info.height, max_side));
    let len = if to > from {
        (to - from).min(MAX_CLIP_SECS)
    } else {
        MIN_CLIP_SECS
    };
    let before = format!("{FFMPEG} -loglevel level+error -ss {from}");
    let codec = clip_encoder();
    let after = format!(
        "-t {len} -map 0:v:0 -an -sn -dn -vf {vf} {codec} -threads 2 \
         -movflags frag_keyframe+empty_moov -f mp4 -"
    );
    run("ffmpeg", &before, path, &after)
}

/// The frames of a running ffmpeg, in order; made by [`decode`]. An error is the last item.
/// Dropping it stops ffmpeg.
pub struct FrameReader {
    info: VideoInfo,
    child: Child,
    stdout: ChildStdout,
    times: Receiver<Option<f64>>,
    stderr: Option<JoinHandle<Vec<String>>>,
    size: (u32, u32),
    frame_secs: f64,
    guess: f64,
    path: PathBuf,
    done: bool,
}

impl FrameReader {
    /// What ffprobe said about the video before decoding began.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    fn read_frame(&mut self) -> Result<Option<Frame>, VideoError> {
        let (width, height) = self.size;
        let len = width as usize * height as usize * 3;
        let mut buf = Vec::with_capacity(len);
        let read = (&mut self.stdout).take(len as u64).read_to_end(&mut buf)?;
        if read < len {
            let status = self.child.wait()?;
            let errors = self.stderr.take().and_then(|h| h.join().ok());
            verdict(&self.path, status, &errors.unwrap_or_default())?;
            if read == 0 {
                return Ok(None);
            }
            let why = format!("ffmpeg's output ended inside a frame ({read} of {len} bytes)");
            return Err(decode_error(&self.path, why));
        }
        let image = RgbImage::from_raw(width, height, buf)
            .ok_or_else(|| decode_error(&self.path, "a frame had the wrong size".into()))?;
        Ok(Some(Frame {
            time: self.next_time(),
            image,
        }))
    }

    /// The time of the frame just read: showinfo logs it before the frame reaches the pipe, so
    /// it is there or on its way; if it never comes, the previous time plus one frame.
    fn next_time(&mut self) -> f64 {
        let time = self.times.recv().ok().flatten().unwrap_or(self.guess);
        self.guess = time + self.frame_secs;
        time
    }
}

impl Iterator for FrameReader {
    type Item = Result<Frame, VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.read_frame().transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        // Errors here mean the process is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drains ffmpeg's stderr: sends each showinfo frame time, keeps the first error lines.
fn read_stderr(stderr: ChildStderr, times: Sender<Option<f64>>) -> JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut errors = Vec::new();
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            if let Some((_, rest)) = line.split_once("pts_time:") {
                let time = rest.split_whitespace().next().and_then(|t| t.parse().ok());
                // The reader may be gone; keep draining so ffmpeg never blocks.
                let _ = times.send(time);
            } else if is_error(&line) && errors.len() < KEPT_LINES {
                errors.push(line.into_owned());
            }
        }
        errors
    })
}

/// The output size: longer side `max_side` at most, aspect kept, even, never upscaled.
fn scaled_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    let ratio = f64::from(max_side.min(long)) / f64::from(long);
    let even = |side: u32| ((f64::from(side) * ratio).round() as u32 / 2 * 2).max(2);
    (even(width), even(height))
}

/// The scale filter; `area` measured both faster and cleaner than bicubic for large reductions.
fn scale((width, height): (u32, u32)) -> String {
    format!("scale={width}:{height}:flags=area")
}

/// Parses a rate like `30000/1001`; `None` for `0/0` or garbage.
fn parse_rate(rate: &str) -> Option<f64> {
    let (num, den) = rate.split_once('/')?;
    let value = num.parse::<f64>().ok()? / den.parse::<f64>().ok()?;
    (value.is_finite() && value > 0.0).then_some(value)
}

/// The encoder options for preview clips: libx264 when this ffmpeg has it, else mpeg4.
fn clip_encoder() -> &'static str {
    static HAS_X264: OnceLock<bool> = OnceLock::new();
    let has_x264 = *HAS_X264.get_or_init(|| {
        let out = Command::new("ffmpeg").arg("-encoders").output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" libx264 "))
    });
    if has_x264 {
        "-c:v libx264 -preset veryfast -crf 26 -pix_fmt yuv420p"
    } else {
        "-c:v mpeg4 -q:v 5 -pix_fmt yuv420p"
    }
}

/// Runs `program` with the space-separated options `before` and `after` around the input, given
/// as `file:` so that names with `:` or a leading `-` are not misread.
fn command(program: &str, before: &str, path: &Path, after: &str) -> Command {
    let mut input = OsString::from("file:");
    input.push(path);
    let mut cmd = Command::new(program);
    let before = format!("-hide_banner {before} -i");
    cmd.args(before.split_whitespace()).arg(input);
    cmd.args(after.split_whitespace()).stdin(Stdio::null());
    cmd
}

/// Runs ffmpeg or ffprobe to the end: its stdout, or an error if it failed or logged errors.
fn run(program: &str, before: &str, path: &Path, after: &str) -> Result<Vec<u8>, VideoError> {
    let out = command(program, before, path, after).output();
    let out = out.map_err(spawn_error)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| is_error(l)).collect();
    verdict(path, out.status, &errors)?;
    Ok(out.stdout)
}

fn spawn_error(err: io::Error) -> VideoError {
    match err.kind() {
        io::ErrorKind::NotFound => VideoError::FfmpegMissing,
        _ => VideoError::Io(err),
    }
}

fn check_time(path: &Path, info: &VideoInfo, time: f64) -> Result<(), VideoError> {
    if time >= 0.0 && (info.duration <= 0.0 || time < info.duration) {
        return Ok(());
    }
    Err(out_of_range(path, info, time))
}

fn out_of_range(path: &Path, info: &VideoInfo, time: f64) -> VideoError {
    let (file, duration) = (file_name(path), info.duration);
    VideoError::OutOfRange {
        file,
        time,
        duration,
    }
}

/// Fails with ffmpeg's first distinct error lines (prefixes dropped, the input named by its file
/// name only) when it logged any, or with its exit status when that is bad.
fn verdict<S: AsRef<str>>(path: &Path, status: ExitStatus, errors: &[S]) -> Result<(), VideoError> {
    let (full, name) = (path.to_string_lossy(), file_name(path));
    let mut kept: Vec<String> = Vec::new();
    for line in errors {
        let text = strip_prefixes(line.as_ref()).replace(&format!("file:{full}"), &name);
        let text = text
            .replace(full.as_ref(), &name)
            .trim_end_matches('.')
            .to_owned();
        if !text.is_empty() && !kept.contains(&text) && kept.len() < MAX_ERROR_LINES {
            kept.push(text);
        }
    }
    match (status.success(), kept.is_empty()) {
        (true, true) => Ok(()),
        (false, true) => Err(decode_error(path, format!("ffmpeg stopped with {status}"))),
        _ => Err(decode_error(path, kept.join("; "))),
    }
}

/// Whether a line logged with `-loglevel level+…` is an error.
fn is_error(line: &str) -> bool {
    ["[error] ", "[fatal] ", "[panic] "]
        .iter()
        .any(|l| line.contains(l))
}

/// Drops `[component @ 0x…]` and `[level]` tags from the front of a log line.
fn strip_prefixes(mut line: &str) -> &str {
    while let Some((tag, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        if !tag.contains(" @ ") && !tag.bytes().all(|b| b.is_ascii_lowercase()) {
            break;
        }
        line = rest;
    }
    line.trim()
}

fn decode_error(path: &Path, message: String) -> VideoError {
    let file = file_name(path);
    VideoError::Decode { file, message }
}

/// The file's name without its folders, for messages.
fn file_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    name.unwrap_or_else(|| "the video".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tempfile::TempDir;

    /// Makes a file with ffmpeg from the lavfi `source` and output `args`.
    fn make(dir: &TempDir, name: &str, source: &str, args: &str) -> PathBuf {
        let path = dir.path().join(name);
        let args = format!("-v error -f lavfi -i {source} {args} -y");
        let mut cmd = Command::new("ffmpeg");
        let out = cmd.args(args.split_whitespace()).arg(&path).output();
        let out = out.expect("ffmpeg runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        path
    }

    fn clip(dir: &TempDir, name: &str, secs: u32, extra: &str) -> PathBuf {
        let args = format!("-t {secs} {} {extra}", clip_encoder());
        make(dir, name, "testsrc2=size=320x240:rate=30", &args)
    }

    fn halve(path: &Path, name: &str) -> PathBuf {
        let bytes = fs::read(path).expect("clip");
        let cut = path.with_file_name(name);
        fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        cut
    }

    fn decode_all(path: &Path) -> (Vec<Frame>, Option<VideoError>) {
        let (mut frames, mut error) = (Vec::new(), None);
        for item in decode(path, 256).expect("starts") {
            match item {
                Ok(frame) => frames.push(frame),
                Err(err) => error = Some(err),
            }
        }
        (frames, error)
    }

    fn assert_decode_error(err: Option<VideoError>, dir: &TempDir, expect: &str) {
        let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(matches!(err, Some(VideoError::Decode { .. })), "{text}");
        assert!(text.contains(expect), "{text}");
        assert!(
            !text.contains(&*dir.path().to_string_lossy()),
            "path leaked: {text}"
        );
    }

    #[test]
    fn good_clip_gives_every_frame_with_times() {
        let dir = TempDir::new().expect("tempdir");
        let path = clip(&dir, "good.mp4", 3, "");
        let info = probe(&path).expect("probe");
        assert_eq!((info.width, info.height, info.fps), (320, 240, 30.0));
        assert!((info.duration - 3.0).abs() < 0.05, "{info:?}");
        let (frames, err) = decode_all(&path);
        assert!(err.is_none(), "{err:?}");
        assert!(frames.len().abs_diff(90) <= 1, "{} frames", frames.len());
        assert!(frames[0].time.abs() < 1e-3);
        for pair in frames.windows(2) {
            assert!((pair[1].time - pair[0].time - 1.0 / 30.0).abs() < 2e-3);
        }
        assert!(frames.iter().all(|f| f.image.dimensions() == (256, 192)));
    }

    #[test]
    fn frame_at_matches_the_decoded_frame() {
        let dir = TempDir::new().expect("tempdir");
        let path = clip(&dir, "good.mp4", 3, "");
        let image = frame_at(&path, 1.5, 256).expect("frame");
        let (frames, _) = decode_all(&path);
        let same = frames
            .iter()
            .find(|f| (f.time - 1.5).abs() < 1e-3)
            .expect("frame at 1.5");
        let pairs = image.iter().zip(same.image.iter());
        let diff: u64 = pairs.map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
        assert!(diff / image.len() as u64 <= 2, "diff {diff}");
        let err = frame_at(&path, 9.0, 256).expect_err("past the end");
        assert!(matches!(err, VideoError::OutOfRange { .. }), "{err}");
    }

    #[test]
    fn cut_clip_is_a_playable_mp4_of_at_most_ten_seconds() {
        let dir = TempDir::new().expect("tempdir");
        let path = clip(&dir, "long.mp4", 12, "");
        let out = dir.path().join("cut.mp4");
        fs::write(&out, cut_clip(&path, 1.0, 100.0, 128).expect("clip")).expect("write");
        let (frames, err) = decode_all(&out);
        assert!(err.is_none(), "{err:?}");
        assert!(frames.len().abs_diff(300) <= 1, "{} frames", frames.len());
        assert_eq!(frames[0].image.dimensions(), (128, 96));
    }

    #[test]
    fn missing_file_is_not_found() {
        let err = probe(Path::new("/no/such/dir/ep1.mkv")).expect_err("missing");
        assert!(
            matches!(&err, VideoError::NotFound { file } if file == "ep1.mkv"),
            "{err}"
        );
        assert!(matches!(
            decode(Path::new("nope.mp4"), 64),
            Err(VideoError::NotFound { .. })
        ));
    }

    #[test]
    fn text_and_random_bytes_are_decode_errors() {
        let dir = TempDir::new().expect("tempdir");
        let text = dir.path().join("notes.mp4");
        fs::write(&text, "just some text\n").expect("write");
        assert_decode_error(decode(&text, 256).err(), &dir, "Invalid data");
        let random = dir.path().join("noise.bin");
        let noise = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8);
        fs::write(&random, noise.collect::<Vec<_>>()).expect("write");
        assert_decode_error(decode(&random, 256).err(), &dir, "noise.bin");
    }

    #[test]
    fn truncated_mp4_with_index_at_the_end_fails_at_once() {
        let dir = TempDir::new().expect("tempdir");
        let cut = halve(&clip(&dir, "end.mp4", 3, ""), "end_half.mp4");
        assert_decode_error(decode(&cut, 256).err(), &dir, "moov atom not found");
    }

    #[test]
    fn truncated_faststart_mp4_fails_after_its_frames() {
        let dir = TempDir::new().expect("tempdir");
        let full = clip(&dir, "fast.mp4", 3, "-movflags +faststart");
        let (frames, err) = decode_all(&halve(&full, "fast_half.mp4"));
        assert!(
            !frames.is_empty() && frames.len() < 90,
            "{} frames",
            frames.len()
        );
        assert_decode_error(err, &dir, "fast_half.mp4");
    }

    #[test]
    fn audio_only_has_no_video_stream() {
        let dir = TempDir::new().expect("tempdir");
        let path = make(&dir, "tone.mp4", "sine=frequency=440:duration=1", "");
        let err = decode(&path, 256).err().expect("no video");
        assert!(matches!(&err, VideoError::NoVideoStream { file } if file == "tone.mp4"));
    }

    #[test]
    fn sizes_keep_aspect_and_are_even() {
        assert_eq!(scaled_size(1280, 720, 256), (256, 144));
        assert_eq!(scaled_size(320, 240, 1000), (320, 240));
        assert_eq!(scaled_size(321, 241, 1000), (320, 240));
        assert_eq!(scaled_size(100, 2000, 256), (12, 256));
        assert_eq!(
            parse_rate("30000/1001").map(|r| (r * 100.0).round()),
            Some(2997.0)
        );
        assert_eq!(parse_rate("0/0"), None);
    }
}
