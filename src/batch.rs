//! Building the `[batch, seq]` token tensor for one inference.
//!
//! A batch is padded to its **longest** tweet, not to the training length of 121: tweets are
//! short (median 10 ids after preprocessing), so this does ~10x less convolution work. The model
//! masks padding (see `model/train.py`), so the scores are identical either way; `tests/golden.rs`
//! proves it.

use tract_onnx::prelude::tract_ndarray::Array2;

/// Pads `seqs` to the longest of them (at least 1, as a convolution needs one position).
pub fn pad_to_longest<S: AsRef<[i32]>>(seqs: &[S], pad_id: i32) -> Array2<i32> {
    let longest = seqs.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
    pad_to(seqs, pad_id, longest.max(1))
}

/// Pads (or truncates) every sequence to exactly `len` ids.
pub fn pad_to<S: AsRef<[i32]>>(seqs: &[S], pad_id: i32, len: usize) -> Array2<i32> {
    let mut data = vec![pad_id; seqs.len() * len];
    for (row, s) in data.chunks_exact_mut(len.max(1)).zip(seqs) {
        let s = s.as_ref();
        let n = s.len().min(len);
        row[..n].copy_from_slice(&s[..n]);
    }
    // The vector has exactly rows × len elements, so the shape always matches.
    Array2::from_shape_vec((seqs.len(), len), data).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_sequence() {
        let t = pad_to_longest(&[vec![5, 6], vec![7], vec![]], 0);
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.as_slice(), Some(&[5, 6, 7, 0, 0, 0][..]));
    }

    #[test]
    fn an_all_empty_batch_still_has_one_position() {
        let t = pad_to_longest(&[Vec::<i32>::new()], 0);
        assert_eq!(t.shape(), &[1, 1]);
    }

    #[test]
    fn pad_to_truncates_longer_sequences() {
        let t = pad_to(&[vec![1, 2, 3]], 0, 2);
        assert_eq!(t.as_slice(), Some(&[1, 2][..]));
    }
}
