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

/// Rows of a batch that run together, padded to `len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub len: usize,
    pub rows: Vec<usize>,
}

/// Splits a batch into groups of rows of similar length, so that short rows are not padded to
/// the longest one. `lengths[i]` is row `i`'s length; `run_cost` is what one more model run
/// costs, in padded positions. Minimises `Σ rows × len + run_cost` over the groups (exactly: a
/// dynamic program over the distinct lengths, of which there are at most a few hundred). Every
/// row is in exactly one group; a group's length is at least 1 and at least that of its rows.
pub fn group_by_length(lengths: &[usize], run_cost: usize) -> Vec<Group> {
    if lengths.is_empty() {
        return Vec::new();
    }
    // Distinct lengths (at least 1: the model needs a position) and how many rows have each.
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i].max(1));
    let mut distinct: Vec<(usize, usize)> = Vec::new();
    for &i in &order {
        let l = lengths[i].max(1);
        match distinct.last_mut() {
            Some((last, n)) if *last == l => *n += 1,
            _ => distinct.push((l, 1)),
        }
    }
    // best[j]: cheapest split of the first j distinct lengths; cut[j]: where its last group starts.
    let d = distinct.len();
    let mut best = vec![0usize; d + 1];
    let mut cut = vec![0usize; d + 1];
    for j in 1..=d {
        let len = distinct[j - 1].0;
        let mut rows = 0;
        best[j] = usize::MAX;
        for i in (1..=j).rev() {
            rows += distinct[i - 1].1;
            let cost = best[i - 1]
                .saturating_add(rows.saturating_mul(len))
                .saturating_add(run_cost);
            if cost < best[j] {
                best[j] = cost;
                cut[j] = i - 1;
            }
        }
    }
    let mut bounds = Vec::new();
    let mut j = d;
    while j > 0 {
        bounds.push((cut[j], j));
        j = cut[j];
    }
    let mut rows = order.into_iter();
    bounds
        .into_iter()
        .rev()
        .map(|(i, j)| {
            let n: usize = distinct[i..j].iter().map(|(_, n)| n).sum();
            Group {
                len: distinct[j - 1].0,
                rows: rows.by_ref().take(n).collect(),
            }
        })
        .collect()
}

/// The length of `row` without its trailing padding (0 for an all-padding row).
pub fn unpadded_len(row: &[i32], pad_id: i32) -> usize {
    row.iter().rposition(|&t| t != pad_id).map_or(0, |i| i + 1)
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
    fn one_long_row_gets_its_own_group() {
        let mut lengths = vec![10; 255];
        lengths.push(121);
        let groups = group_by_length(&lengths, 128);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len, 10);
        assert_eq!(groups[0].rows.len(), 255);
        assert_eq!(
            groups[1],
            Group {
                len: 121,
                rows: vec![255]
            }
        );
    }

    #[test]
    fn small_batches_stay_whole_when_another_run_costs_more_than_the_padding() {
        let groups = group_by_length(&[3, 5, 8, 10, 12, 12, 15, 20], 128);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len, 20);
        assert_eq!(groups[0].rows.len(), 8);
    }

    #[test]
    fn groups_cover_every_row_once_and_fit_their_rows() {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 7919) % 37).collect();
        for run_cost in [0, 1, 16, 128, 100_000] {
            let groups = group_by_length(&lengths, run_cost);
            let mut seen: Vec<usize> = groups.iter().flat_map(|g| g.rows.clone()).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..500).collect::<Vec<_>>());
            for g in &groups {
                assert!(g.len >= 1);
                assert!(g.rows.iter().all(|&r| lengths[r] <= g.len));
            }
        }
        // Free runs: one group per distinct length; prohibitive runs: one group.
        assert_eq!(group_by_length(&lengths, 0).len(), 37 - 1);
        assert_eq!(group_by_length(&lengths, 100_000).len(), 1);
    }

    #[test]
    fn unpadded_len_ignores_only_trailing_padding() {
        assert_eq!(unpadded_len(&[4, 0, 5, 0, 0], 0), 3);
        assert_eq!(unpadded_len(&[0, 0], 0), 0);
        assert_eq!(unpadded_len(&[], 0), 0);
    }

    #[test]
    fn pad_to_truncates_longer_sequences() {
        let t = pad_to(&[vec![1, 2, 3]], 0, 2);
        assert_eq!(t.as_slice(), Some(&[1, 2][..]));
    }
}
