//! The three tiers of the store and the time arithmetic they share: how wide
//! a tier's rows are, how much time one sealed block of a tier covers, and
//! the rows themselves ([`Rows`]: a timestamp column and one or five value
//! columns).

/// A tier: per-second raw values, 1-minute rollups or 1-hour rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Every value as it arrived (agents sample once a second by default).
    Raw = 0,
    /// One row per minute: min, max, sum, count, last.
    Minute = 1,
    /// One row per hour: min, max, sum, count, last.
    Hour = 2,
}

/// Value columns of a rollup row, in this order.
pub const ROLLUP_COLS: usize = 5;
/// Column of the minimum in a rollup row.
pub const MIN: usize = 0;
/// Column of the maximum.
pub const MAX: usize = 1;
/// Column of the sum.
pub const SUM: usize = 2;
/// Column of the count.
pub const COUNT: usize = 3;
/// Column of the last value.
pub const LAST: usize = 4;

impl Tier {
    /// All tiers, finest first.
    pub const ALL: [Tier; 3] = [Tier::Raw, Tier::Minute, Tier::Hour];

    /// Width of one row in ms (0 for raw: a row is a point).
    pub fn bucket_ms(self) -> i64 {
        match self {
            Tier::Raw => 0,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }

    /// Time one sealed block covers, in ms, aligned to the Unix epoch:
    /// about 900 raw points, 1,440 minute rows, 720 hour rows per block at
    /// one sample a second. Large enough for the column compression to
    /// work, small enough that a query reads little it does not need.
    pub fn window_ms(self) -> i64 {
        match self {
            Tier::Raw => 15 * 60_000,
            Tier::Minute => 86_400_000,
            Tier::Hour => 30 * 86_400_000,
        }
    }

    /// Start of the block window holding `ts`.
    pub fn window_of(self, ts: i64) -> i64 {
        ts.div_euclid(self.window_ms()) * self.window_ms()
    }

    /// Value columns of a row.
    pub fn cols(self) -> usize {
        match self {
            Tier::Raw => 1,
            _ => ROLLUP_COLS,
        }
    }

    /// The tier from its stored number.
    pub fn from_u8(v: u8) -> Option<Tier> {
        Tier::ALL.get(v as usize).copied()
    }

    /// The next finer tier.
    pub fn finer(self) -> Option<Tier> {
        match self {
            Tier::Raw => None,
            Tier::Minute => Some(Tier::Raw),
            Tier::Hour => Some(Tier::Minute),
        }
    }

    /// Name as used in logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }
}

/// Rows of one series in one tier, in time order, column-wise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// Unix ms of each row (for rollups: the start of its bucket).
    pub ts: Vec<i64>,
    /// One vector per value column, each as long as `ts`.
    pub cols: Vec<Vec<f64>>,
}

impl Rows {
    /// No rows, with `cols` value columns.
    pub fn new(cols: usize) -> Self {
        Self {
            ts: Vec::new(),
            cols: vec![Vec::new(); cols],
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Appends a row; `values` has one entry per column.
    pub fn push(&mut self, ts: i64, values: &[f64]) {
        self.ts.push(ts);
        for (col, v) in self.cols.iter_mut().zip(values) {
            col.push(*v);
        }
    }

    /// Makes room for `n` more rows.
    pub fn reserve(&mut self, n: usize) {
        self.ts.reserve(n);
        self.cols.iter_mut().for_each(|c| c.reserve(n));
    }

    /// Removes every row, keeping the capacity.
    pub fn clear(&mut self) {
        self.ts.clear();
        self.cols.iter_mut().for_each(Vec::clear);
    }

    /// Appends every row of `other` (same columns).
    pub fn extend(&mut self, other: &Rows) {
        self.ts.extend_from_slice(&other.ts);
        for (col, o) in self.cols.iter_mut().zip(&other.cols) {
            col.extend_from_slice(o);
        }
    }

    /// Row `i`'s values.
    pub fn row(&self, i: usize) -> impl Iterator<Item = f64> + '_ {
        self.cols.iter().map(move |c| c[i])
    }

    /// Sorts by time and keeps the first row of equal timestamps (the
    /// writer appends in order; this only guards blocks merged from chunks).
    pub fn sort_dedup(&mut self) {
        if self.ts.windows(2).all(|w| w[0] < w[1]) {
            return;
        }
        let mut order: Vec<usize> = (0..self.ts.len()).collect();
        order.sort_by_key(|&i| (self.ts[i], i));
        order.dedup_by_key(|i| self.ts[*i]);
        self.ts = order.iter().map(|&i| self.ts[i]).collect();
        for col in &mut self.cols {
            *col = order.iter().map(|&i| col[i]).collect();
        }
    }
}
