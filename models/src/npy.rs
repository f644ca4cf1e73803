//! NumPy's `.npy` format (version 1.0, little-endian float32), for handing arrays to Python
//! tools: `animelens embed`'s matrices and the ONNX export's parity samples.

use std::path::Path;

/// The `.npy` bytes of a C-order float32 array of `shape`.
pub fn encode(shape: &[usize], values: &[f32]) -> Vec<u8> {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an `(rows, cols)` matrix, one row per vector (all rows as long as the first).
pub fn write_matrix(path: &Path, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    std::fs::write(path, encode(&[rows.len(), cols], &values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_bytes_and_data_follows_little_endian() {
        let bytes = encode(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 6.0);
        let scalar_row = encode(&[4], &[0.0; 4]);
        assert!(String::from_utf8_lossy(&scalar_row).contains("'shape': (4,)"));
    }
}
