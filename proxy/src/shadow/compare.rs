//! Comparing the two answers of a shadow read (pure): as multisets of rows, or as sequences when the query
//! orders its rows. Rows are each row's text form, so both shapes compare by value whatever column types
//! each side computes.

use std::collections::HashMap;
use std::hash::Hash;

/// How the two answers of one read compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Match,
    /// Rows only the old table's answer has and rows only the shadow's has (counted with multiplicity);
    /// both 0 when only the order of an ordered query differs.
    Mismatch {
        only_old: usize,
        only_new: usize,
    },
}

/// Compares `old` with `new`: in order when `ordered`, else regardless of order (duplicates count).
pub fn compare<R: Eq + Hash>(old: &[R], new: &[R], ordered: bool) -> Comparison {
    if ordered && old == new {
        return Comparison::Match;
    }
    let mut counts: HashMap<&R, isize> = HashMap::with_capacity(old.len());
    for row in old {
        *counts.entry(row).or_default() += 1;
    }
    for row in new {
        *counts.entry(row).or_default() -= 1;
    }
    let only_old = counts.values().filter(|&&c| c > 0).map(|&c| c.unsigned_abs()).sum();
    let only_new = counts.values().filter(|&&c| c < 0).map(|&c| c.unsigned_abs()).sum();
    if !ordered && only_old == 0 && only_new == 0 {
        return Comparison::Match;
    }
    Comparison::Mismatch { only_old, only_new }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unordered_answers_compare_as_multisets() {
        let a = rows(&["(1,x)", "(2,y)", "(2,y)"]);
        assert_eq!(compare(&a, &rows(&["(2,y)", "(1,x)", "(2,y)"]), false), Comparison::Match);
        assert_eq!(
            compare(&a, &rows(&["(2,y)", "(1,x)"]), false),
            Comparison::Mismatch { only_old: 1, only_new: 0 },
            "a duplicate counts"
        );
        assert_eq!(
            compare(&a, &rows(&["(1,x)", "(2,y)", "(2,z)"]), false),
            Comparison::Mismatch { only_old: 1, only_new: 1 }
        );
        assert_eq!(compare::<String>(&[], &[], false), Comparison::Match);
    }

    #[test]
    fn ordered_answers_compare_as_sequences() {
        let a = rows(&["(1,x)", "(2,y)"]);
        assert_eq!(compare(&a, &a.clone(), true), Comparison::Match);
        assert_eq!(
            compare(&a, &rows(&["(2,y)", "(1,x)"]), true),
            Comparison::Mismatch { only_old: 0, only_new: 0 },
            "same rows, other order"
        );
        assert_eq!(compare(&a, &rows(&["(1,x)"]), true), Comparison::Mismatch { only_old: 1, only_new: 0 });
    }
}
