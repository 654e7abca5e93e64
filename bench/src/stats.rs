//! Median and range of repeated measurements (a leaf shared by the results and every report section).

/// Median and range of a set of repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Stat { median: median_sorted(&sorted), min: sorted[0], max: sorted[sorted.len() - 1] })
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    Stat::of(values).map(|s| s.median)
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(median(&[5.0, 1.0, 9.0]), Some(5.0));
        assert!(Stat::of(&[]).is_none());
    }
}
