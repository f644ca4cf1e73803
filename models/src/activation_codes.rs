//! How a convolution's inputs become u8 codes: the histogram a calibration pass records of
//! them ([`ActivationHistogram`]), the rule that turns it into a range ([`RangeRule`]), and the
//! resulting scale and zero point ([`InputCodes`]) that the int8 kernel (`ops::int8`) applies.
//! Kept apart from `quantise.rs`, which drives a calibration through the folded network, so
//! that the network and the kernels can use these types without depending on it.

use serde::{Deserialize, Serialize};

/// Histogram bins: the top 16 bits of a positive f32 (sign, exponent, 7 mantissa bits), so
/// bins are 1/128 of an octave wide whatever the range.
const BINS: usize = 1 << 15;

/// What a convolution's inputs looked like over a calibration.
#[derive(Debug, Clone, Default)]
pub struct ActivationHistogram {
    /// Positive values by bin (empty until the first one).
    bins: Vec<u64>,
    zeros: u64,
    negatives: u64,
    max: f32,
    /// The most negative value seen (0 if none).
    min: f32,
}

impl ActivationHistogram {
    /// Adds `values`.
    pub fn record(&mut self, values: &[f32]) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS];
        }
        for &v in values {
            if v > 0.0 && v.is_finite() {
                self.bins[(v.to_bits() >> 16) as usize] += 1;
                self.max = self.max.max(v);
            } else if v < 0.0 {
                self.negatives += 1;
                self.min = self.min.min(v);
            } else {
                self.zeros += 1;
            }
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.zeros + self.negatives + self.bins.iter().sum::<u64>()
    }

    /// Whether any value was negative (the input is not post-ReLU).
    pub fn has_negatives(&self) -> bool {
        self.negatives > 0
    }

    /// The range `rule` picks: the largest value, or the upper edge of the bin holding the
    /// percentile (never above the largest value).
    pub fn range(&self, rule: RangeRule) -> f32 {
        match rule {
            RangeRule::Max => self.max,
            RangeRule::Percentile(p) => {
                let wanted = (self.count() as f64 * p / 100.0).ceil() as u64;
                let mut seen = self.zeros + self.negatives;
                if seen >= wanted {
                    return 0.0;
                }
                for (bin, &n) in self.bins.iter().enumerate() {
                    seen += n;
                    if seen >= wanted {
                        return f32::from_bits(((bin as u32) + 1) << 16).min(self.max);
                    }
                }
                self.max
            }
        }
    }
}

/// How a convolution's input becomes u8 codes: `code = round(x / scale) + zero_point`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputCodes {
    /// The value of one code step.
    pub scale: f32,
    /// The code of 0: 0 for a post-ReLU input, 128 for a signed one.
    pub zero_point: u8,
}

impl InputCodes {
    /// The codes for what `histogram` saw under `rule`: unsigned inputs over 0..=255, signed
    /// ones (any negative seen) around 128 over their largest magnitude.
    pub fn for_histogram(histogram: &ActivationHistogram, rule: RangeRule) -> Self {
        let (range, levels, zero_point) = if histogram.has_negatives() {
            (
                histogram.max.max(-histogram.min),
                SIGNED_LEVELS,
                SIGNED_ZERO_POINT,
            )
        } else {
            (histogram.range(rule), ACTIVATION_LEVELS, 0)
        };
        let scale = if range > 0.0 { range / levels } else { 1.0 };
        Self { scale, zero_point }
    }
}

/// Largest code of an unsigned (post-ReLU) input.
const ACTIVATION_LEVELS: f32 = 255.0;
/// Code steps either side of a signed input's zero point.
const SIGNED_LEVELS: f32 = 127.0;
/// The code of 0 for a signed input.
const SIGNED_ZERO_POINT: u8 = 128;

/// How a calibration turns a histogram into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeRule {
    /// The largest value seen (ONNX Runtime's MinMax).
    Max,
    /// This percentile (0–100] of all values seen, zeros included.
    Percentile(f64),
}

impl RangeRule {
    /// Parses `max` or a percentile such as `99.99`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        match text.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(Self::Percentile(p)),
            _ => Err(format!(
                "calibration rule {text:?}: give `max` or a percentile in (0, 100], e.g. 99.99"
            )),
        }
    }

    /// How a card names the rule: `max` or `percentile P`.
    pub fn describe(self) -> String {
        match self {
            Self::Max => "max".into(),
            Self::Percentile(p) => format!("percentile {p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_the_max_or_the_bin_edge_of_the_percentile() {
        let mut h = ActivationHistogram::default();
        // 90 zeros, 9 values of 1.0, one outlier of 100.
        h.record(&[0.0; 90]);
        h.record(&[1.0; 9]);
        h.record(&[100.0]);
        assert_eq!(h.count(), 100);
        assert_eq!(h.range(RangeRule::Max), 100.0);
        // The 99th value is 1.0: its bin's upper edge, 1 + 1/128.
        let r = h.range(RangeRule::Percentile(99.0));
        assert!((r - (1.0 + 1.0 / 128.0)).abs() < 1e-6, "{r}");
        assert_eq!(h.range(RangeRule::Percentile(100.0)), 100.0);
        assert_eq!(h.range(RangeRule::Percentile(50.0)), 0.0);
        assert!(!h.has_negatives());
        h.record(&[-0.5]);
        assert!(h.has_negatives());
        // Signed: around 128, over the largest magnitude (here the max, 100).
        let codes = InputCodes::for_histogram(&h, RangeRule::Percentile(99.0));
        assert_eq!((codes.zero_point, codes.scale), (128, 100.0 / 127.0));
        let mut small = ActivationHistogram::default();
        small.record(&[-3.0, 1.0]);
        assert_eq!(
            InputCodes::for_histogram(&small, RangeRule::Max).scale,
            3.0 / 127.0
        );
    }

    #[test]
    fn rules_parse_with_a_clear_error() {
        assert_eq!(RangeRule::parse("max"), Ok(RangeRule::Max));
        assert_eq!(RangeRule::parse("99.99"), Ok(RangeRule::Percentile(99.99)));
        assert!(RangeRule::parse("101").unwrap_err().contains("percentile"));
        assert!(RangeRule::parse("often").is_err());
    }
}
