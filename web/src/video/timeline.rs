//! A video's character timeline — which character is on screen from when to when, scene by scene,
//! with the confidence and "unknown" of the open-set rule — and its three written forms: JSON,
//! CSV and WebVTT subtitles (so that a player shows the names over the video).

use serde::Serialize;
use std::fmt::Write;

/// Written forms of a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineFormat {
    /// A JSON document.
    Json,
    /// CSV with a header row.
    Csv,
    /// WebVTT subtitles.
    Vtt,
}

/// One stretch of the video with one answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TimelineSegment {
    /// Start, seconds.
    pub from: f64,
    /// End, seconds.
    pub to: f64,
    /// The character on screen, or `None` for "unknown" (no known character is close enough).
    pub character: Option<String>,
    /// The best scene's cosine to the character's centroid.
    pub confidence: f32,
    /// Scenes merged into this segment.
    pub scenes: usize,
}

/// Merges scene answers `(from, to, character, confidence)` in time order: neighbours with the
/// same answer become one segment (the best confidence kept).
pub fn merge_scenes(
    scenes: impl IntoIterator<Item = (f64, f64, Option<String>, f32)>,
) -> Vec<TimelineSegment> {
    let mut out: Vec<TimelineSegment> = Vec::new();
    for (from, to, character, confidence) in scenes {
        match out.last_mut() {
            Some(last) if last.character == character => {
                last.to = last.to.max(to);
                last.confidence = last.confidence.max(confidence);
                last.scenes += 1;
            }
            _ => out.push(TimelineSegment {
                from,
                to,
                character,
                confidence,
                scenes: 1,
            }),
        }
    }
    out
}

/// The label a segment shows.
fn label(segment: &TimelineSegment) -> &str {
    segment.character.as_deref().unwrap_or("unknown")
}

/// CSV: `from,to,character,confidence,scenes`, names quoted when they need it.
pub fn to_csv(segments: &[TimelineSegment]) -> String {
    let mut out = String::from("from,to,character,confidence,scenes\n");
    for s in segments {
        let name = label(s);
        let name = if name.contains([',', '"', '\n']) {
            format!("\"{}\"", name.replace('"', "\"\""))
        } else {
            name.to_string()
        };
        let _ = writeln!(
            out,
            "{:.3},{:.3},{name},{:.4},{}",
            s.from, s.to, s.confidence, s.scenes
        );
    }
    out
}

/// A WebVTT timestamp `hh:mm:ss.mmm`.
fn vtt_time(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// WebVTT subtitles: one cue per segment, "Name (0.93)" or "unknown".
pub fn to_webvtt(segments: &[TimelineSegment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for (i, s) in segments.iter().enumerate() {
        let text = match &s.character {
            Some(name) => format!("{} ({:.2})", name.replace("-->", "->"), s.confidence),
            None => "unknown".to_string(),
        };
        let _ = write!(
            out,
            "{}\n{} --> {}\n{text}\n\n",
            i + 1,
            vtt_time(s.from),
            vtt_time(s.to)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments() -> Vec<TimelineSegment> {
        merge_scenes([
            (0.0, 1.0, Some("Gura".to_string()), 0.8),
            (1.0, 2.5, Some("Gura".to_string()), 0.9),
            (2.5, 4.0, None, 0.3),
            (4.0, 3725.5, Some("Ina, \"the\" priestess".to_string()), 0.7),
        ])
    }

    #[test]
    fn neighbours_with_one_answer_merge() {
        let s = segments();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].from, s[0].to, s[0].scenes), (0.0, 2.5, 2));
        assert_eq!(s[0].confidence, 0.9);
        assert_eq!(s[1].character, None);
    }

    #[test]
    fn csv_quotes_names_that_need_it() {
        let csv = to_csv(&segments());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "from,to,character,confidence,scenes");
        assert_eq!(lines[1], "0.000,2.500,Gura,0.9000,2");
        assert_eq!(lines[2], "2.500,4.000,unknown,0.3000,1");
        assert_eq!(
            lines[3],
            "4.000,3725.500,\"Ina, \"\"the\"\" priestess\",0.7000,1"
        );
    }

    #[test]
    fn webvtt_cues_have_hour_timestamps() {
        let vtt = to_webvtt(&segments());
        assert!(vtt.starts_with("WEBVTT\n\n1\n00:00:00.000 --> 00:00:02.500\nGura (0.90)\n"));
        assert!(vtt.contains("3\n00:00:04.000 --> 01:02:05.500\n"));
        assert!(vtt.contains("\nunknown\n"));
    }
}
