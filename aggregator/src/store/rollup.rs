//! Rollups: min, max, sum, count and last of the values in a time bucket, so
//! a one-second spike survives in the minute and hour rows (as their max)
//! and the average stays exact (sum / count). The writer folds raw values
//! into the open minute and hour of each series ([`Open`]); queries fold
//! rows of any tier into the buckets of the step asked for ([`Agg::merge`]).

use super::tier::{COUNT, LAST, MAX, MIN, ROLLUP_COLS, SUM, Tier};

/// The rollup of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// How many values.
    pub count: f64,
    /// The latest value.
    pub last: f64,
}

impl Agg {
    /// The rollup of one value.
    pub fn of(v: f64) -> Self {
        Self {
            min: v,
            max: v,
            sum: v,
            count: 1.0,
            last: v,
        }
    }

    /// Adds a later value.
    pub fn add(&mut self, v: f64) {
        self.merge(&Agg::of(v));
    }

    /// Adds the rollup of later values.
    pub fn merge(&mut self, later: &Agg) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum += later.sum;
        self.count += later.count;
        self.last = later.last;
    }

    /// sum / count.
    pub fn avg(&self) -> f64 {
        self.sum / self.count
    }

    /// As a rollup row's columns.
    pub fn cols(&self) -> [f64; ROLLUP_COLS] {
        let mut c = [0.0; ROLLUP_COLS];
        c[MIN] = self.min;
        c[MAX] = self.max;
        c[SUM] = self.sum;
        c[COUNT] = self.count;
        c[LAST] = self.last;
        c
    }

    /// Row `i` of rows of `tier` as a rollup (a raw value is a rollup of one).
    pub fn from_row(cols: &[Vec<f64>], i: usize) -> Self {
        if cols.len() == 1 {
            return Agg::of(cols[0][i]);
        }
        Self {
            min: cols[MIN][i],
            max: cols[MAX][i],
            sum: cols[SUM][i],
            count: cols[COUNT][i],
            last: cols[LAST][i],
        }
    }
}

/// The bucket of a rollup tier being filled for one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Open {
    /// Bucket start, Unix ms.
    pub bucket: i64,
    /// What it holds so far.
    pub agg: Agg,
}

/// Folds the raw value `v` at `ts` into the open bucket of `tier`; returns
/// the bucket it closes, if `ts` is past it.
pub fn fold(open: &mut Option<Open>, tier: Tier, ts: i64, v: f64) -> Option<Open> {
    fold_agg(open, tier, ts, &Agg::of(v))
}

/// Folds the rollup `agg` of values at `ts` (a finer tier's row) into the
/// open bucket of `tier`; returns the bucket it closes, if `ts` is past it.
/// A value of a bucket already closed is not folded anywhere.
pub fn fold_agg(open: &mut Option<Open>, tier: Tier, ts: i64, agg: &Agg) -> Option<Open> {
    let bucket = ts.div_euclid(tier.bucket_ms()) * tier.bucket_ms();
    match open {
        Some(o) if o.bucket == bucket => {
            o.agg.merge(agg);
            None
        }
        Some(o) if bucket < o.bucket => None,
        _ => open.replace(Open { bucket, agg: *agg }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_survives_and_the_average_is_exact() {
        let mut open = None;
        let mut closed = Vec::new();
        let values = [1.0, 2.0, 99.0, 3.0];
        for (i, v) in values.iter().enumerate() {
            closed.extend(fold(&mut open, Tier::Minute, 1000 * i as i64, *v));
        }
        assert!(closed.is_empty());
        closed.extend(fold(&mut open, Tier::Minute, 60_000, 5.0));
        let c = closed[0];
        assert_eq!(c.bucket, 0);
        assert_eq!((c.agg.min, c.agg.max, c.agg.last), (1.0, 99.0, 3.0));
        assert_eq!(c.agg.avg(), 105.0 / 4.0);
        assert_eq!(open.unwrap().bucket, 60_000);
        // A late value of a closed bucket is not folded anywhere.
        assert_eq!(fold(&mut open, Tier::Minute, 59_000, 7.0), None);
        assert_eq!(open.unwrap().agg.count, 1.0);
    }

    #[test]
    fn merging_rollups_equals_rolling_up_the_values() {
        let values: Vec<f64> = (0..120).map(|i| ((i * 37) % 101) as f64 / 3.0).collect();
        let mut whole = Agg::of(values[0]);
        values[1..].iter().for_each(|v| whole.add(*v));
        let mut a = Agg::of(values[0]);
        values[1..60].iter().for_each(|v| a.add(*v));
        let mut b = Agg::of(values[60]);
        values[61..].iter().for_each(|v| b.add(*v));
        a.merge(&b);
        assert_eq!(a.min, whole.min);
        assert_eq!(a.max, whole.max);
        assert_eq!(a.count, whole.count);
        assert_eq!(a.last, whole.last);
        assert!((a.sum - whole.sum).abs() < 1e-9);
        let row: Vec<Vec<f64>> = a.cols().iter().map(|c| vec![*c]).collect();
        assert_eq!(Agg::from_row(&row, 0), a);
    }
}
