//! L2 normalisation, shared by every descriptor the character vector is made of (the embedding's
//! fused parts, the palette, a whitened part): each is compared by cosine, so each is kept at
//! unit length.

/// `v / |v|` (a zero vector stays zero).
pub(crate) fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::normalised;

    #[test]
    fn unit_length_and_zero_stays_zero() {
        assert_eq!(normalised(vec![3.0, 4.0]), vec![0.6, 0.8]);
        assert_eq!(normalised(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
