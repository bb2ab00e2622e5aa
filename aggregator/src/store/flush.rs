//! The flush: one transaction per `flush_interval_ms` holding the log
//! record of the new rows ([`super::recent`]), the checkpoint of one slice
//! of the series and a share of the windows waiting to be sealed
//! ([`super::checkpoint`]), and the deletion of the log records every slice
//! has passed. Also the full checkpoint of a clean close.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::StoreError;
use super::checkpoint::{SLICE_RUN, Seals, Window, seal, write_rows};
use super::chunks::Groups;
use super::engine::{Op, Table};
use super::recent::{Recent, append_entry, log_key};
use super::tier::{Rows, Tier};
use super::writer::{NEXT_ID_KEY, Writer};

impl Writer {
    /// Writes everything pending in one transaction: the rows of every
    /// series outside this flush's slice as one log record
    /// ([`super::recent`]); the slice's rows since its last checkpoint
    /// (pending ones included) into the per-series tables; a share of the
    /// windows waiting to be sealed; and the deletion of the log records
    /// every slice has passed ([`super::checkpoint`]). Returns the raw
    /// values written.
    pub fn flush(&mut self) -> Result<u64, StoreError> {
        if self.dirty.is_empty()
            && self.names.new_names.is_empty()
            && self.proc_ops.is_empty()
            && self.rotation.is_idle()
            && self.seals.len() == 0
        {
            return Ok(0);
        }
        let started = Instant::now();
        self.last_groups = [None, None, None];
        if self.failed_flushes >= self.rotation.slice_count() {
            // A whole rotation failed (a full or broken disk): what memory
            // holds stays for when writes work again, new rows go.
            let mut lost = 0;
            for id in self.dirty.drain(..) {
                if let Some(Some(state)) = self.series.get_mut(id as usize) {
                    lost += state.drop_pending() as u64;
                }
            }
            self.stats.values_lost.fetch_add(lost, Ordering::Relaxed);
        }
        let step = self.step;
        self.step += 1;
        let mut ops = Vec::with_capacity(self.names.new_names.len() + 2);
        ops.append(&mut self.proc_ops);
        // Names leave only with a committed flush: a series' rows outlive
        // a failed one, and must not be written under an id with no name.
        // In key order: 660,000 of them when 10,000 hosts connect, each
        // insert landing next to the one before.
        self.names.new_names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, id) in &self.names.new_names {
            ops.push(Op::Put(
                Table::Series,
                name.as_bytes().to_vec(),
                id.to_be_bytes().to_vec(),
            ));
        }
        if !ops.is_empty() {
            ops.push(Op::Put(
                Table::Series,
                NEXT_ID_KEY.to_vec(),
                self.names.next_id.to_be_bytes().to_vec(),
            ));
        }
        // Windows queued by earlier flushes: their chunks are committed.
        // A window that cannot be sealed now (its rows unreadable) waits at
        // the back of the queue rather than fail the flush again and again.
        let due = self.seals.due();
        let mut retry = Vec::new();
        for &(run, tier, w) in &due {
            let mark = ops.len();
            if let Err(e) = seal(
                self.engine.as_ref(),
                run,
                tier,
                w,
                &mut self.deltas,
                &mut ops,
            ) {
                ops.truncate(mark);
                tracing::warn!(cause = %e, run, tier = tier.name(), "store: sealing a window failed; it is tried again later");
                retry.push((run, tier, w));
            }
        }
        let slice = self.rotation.slice_at(step);
        let mut values = 0u64;
        // The last flush's buffer: a record is tens of MB at 10,000 hosts,
        // fresh pages for it at every flush cost more than writing it.
        let mut record = std::mem::take(&mut self.record_buf);
        record.clear();
        // Each series' pending rows of a tier, as one chunk's rows.
        let mut chunks = [
            Rows::new(Tier::Raw.cols()),
            Rows::new(Tier::Minute.cols()),
            Rows::new(Tier::Hour.cols()),
        ];
        for id in &self.dirty {
            let Some(Some(state)) = self.series.get(*id as usize) else {
                continue;
            };
            values += state.raw.len() as u64;
            if self.rotation.slice_of(*id) == slice {
                continue; // written into its tables below
            }
            for tier in Tier::ALL {
                let rows = &mut chunks[tier as usize];
                rows.clear();
                state.append_pending(tier, rows);
                if !rows.is_empty() {
                    append_entry(&mut record, *id, tier, rows);
                }
            }
        }
        // Readers see the new rows from now on; if the transaction fails
        // they stay in memory and go to the tables at their slice's turn.
        {
            let mut recent = self.recent.writer();
            for id in self.dirty.drain(..) {
                let Some(Some(state)) = self.series.get_mut(id as usize) else {
                    continue;
                };
                recent.add(
                    id,
                    &mut state.raw,
                    &mut state.rollups,
                    self.rotation.flushes_until(id, step),
                );
                if !state.logged {
                    state.logged = true;
                    self.rotation.add(id);
                }
            }
        }
        let mut ids = self.rotation.take(slice);
        ids.sort_unstable(); // each run's group built in series order
        let mut before = Vec::with_capacity(ids.len());
        let mut ended = Vec::new();
        let built = self.write_checkpoint(&ids, &mut ops, &mut before, &mut ended);
        let trimmed = self.rotation.trimmable(step, slice);
        ops.extend(
            self.rotation
                .records(trimmed)
                .map(|r| Op::Delete(Table::Log, log_key(r).to_vec())),
        );
        let logged = !record.is_empty();
        if logged {
            ops.push(Op::Put(Table::Log, log_key(step).to_vec(), record));
        } else {
            self.record_buf = record;
        }
        let result = built.and_then(|()| self.engine.apply(&ops));
        if let Some(Op::Put(Table::Log, _, record)) = ops.pop() {
            self.record_buf = record;
        }
        drop(ops);
        match &result {
            Ok(()) => {
                self.failed_flushes = 0;
                self.names.new_names.clear();
                self.checkpointed(&ids);
                self.rotation.committed(step, slice, trimmed, logged);
                self.seals.push(ended);
                self.seals.push(retry);
                self.stats
                    .values_written
                    .fetch_add(values, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed_flushes += 1;
                self.not_checkpointed(ids, before, due);
            }
        }
        self.stats
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        result.map(|()| values)
    }

    /// After the transaction writing the rows of `ids` committed: readers
    /// find them in the tables.
    fn checkpointed(&mut self, ids: &[u32]) {
        self.recent.clear(ids);
        for id in ids {
            if let Some(Some(state)) = self.series.get_mut(*id as usize) {
                state.logged = false;
            }
        }
    }

    /// After a failed transaction: the series keep their rows in memory
    /// and their disk windows, the seals wait.
    fn not_checkpointed(
        &mut self,
        ids: Vec<u32>,
        before: Vec<(u32, [Option<i64>; 3])>,
        due: Vec<Window>,
    ) {
        for (id, disk) in before {
            if let Some(Some(state)) = self.series.get_mut(id as usize) {
                state.disk_window = disk;
            }
        }
        self.rotation.restore(ids);
        self.seals.unpop(due);
    }

    /// Checkpoints one slice per flush, `flushes` slices in a rotation (at
    /// least 1).
    pub fn set_checkpoint_every(&mut self, flushes: u32) {
        self.rotation.resize(flushes, SLICE_RUN);
    }

    /// As [`set_checkpoint_every`](Self::set_checkpoint_every), with runs of
    /// `run` consecutive series per slice instead of [`SLICE_RUN`] (a few
    /// series spread over several slices, in tests).
    pub fn set_slices(&mut self, flushes: u32, run: u32) {
        self.rotation.resize(flushes, run);
    }

    /// Spreads seals for flushes every `ms` ([`Seals::new`]).
    pub fn set_flush_interval(&mut self, ms: u64) {
        let queued = self.seals.all();
        self.seals = Seals::new(ms);
        self.seals.push(queued);
    }

    /// Queues windows to seal (ended windows a previous run left open).
    pub fn queue_seals(&mut self, windows: Vec<Window>) {
        self.seals.push(windows);
    }

    /// Windows waiting to be sealed, and log records on disk.
    pub fn backlog(&self) -> (usize, usize) {
        (self.seals.len(), self.rotation.record_count())
    }

    /// The rows flushed since the last checkpoint, for readers.
    pub fn recent(&self) -> &Arc<Recent> {
        &self.recent
    }

    /// Moves every series' rows since its last checkpoint into the
    /// per-series tables and deletes the log, in one transaction (a clean
    /// close; a bench's end). Rows not flushed yet stay pending; windows
    /// that ended stay queued for sealing.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.rotation.is_idle() {
            return Ok(());
        }
        self.last_groups = [None, None, None];
        let mut ids = self.rotation.take_all();
        ids.sort_unstable();
        let mut ops = Vec::with_capacity(ids.len() * 2);
        let mut before = Vec::with_capacity(ids.len());
        let mut ended = Vec::new();
        let built = self.write_checkpoint(&ids, &mut ops, &mut before, &mut ended);
        let records = self.rotation.record_count();
        ops.extend(
            self.rotation
                .records(records)
                .map(|r| Op::Delete(Table::Log, log_key(r).to_vec())),
        );
        match built.and_then(|()| self.engine.apply(&ops)) {
            Ok(()) => {
                self.checkpointed(&ids);
                self.rotation.all_committed(self.step);
                self.seals.push(ended);
                Ok(())
            }
            Err(e) => {
                self.not_checkpointed(ids, before, Vec::new());
                Err(e)
            }
        }
    }

    /// Seals every window waiting, in one transaction (tests, benches).
    pub fn seal_queued(&mut self) -> Result<usize, StoreError> {
        self.last_groups = [None, None, None];
        let all = self.seals.all();
        let mut ops = Vec::new();
        self.seal_into(all.iter().copied(), &mut ops)?;
        self.engine.apply(&ops)?;
        Ok(all.len())
    }

    /// Adds to `ops` the writing of the rows in `recent` of series `ids`
    /// (their open chunks; windows that ended go to `ended`); `before` gets
    /// each series' disk windows as they were, to restore if it fails.
    fn write_checkpoint(
        &mut self,
        ids: &[u32],
        ops: &mut Vec<Op>,
        before: &mut Vec<(u32, [Option<i64>; 3])>,
        ended: &mut Vec<Window>,
    ) -> Result<(), StoreError> {
        let recent = self.recent.all();
        let mut groups = Groups::default();
        let mut scratch = Rows::new(Tier::Raw.cols());
        for id in ids {
            let Some(Some(state)) = self.series.get_mut(*id as usize) else {
                continue;
            };
            let Some(Some(rows)) = recent.get(*id as usize) else {
                continue;
            };
            before.push((*id, state.disk_window));
            for tier in Tier::ALL {
                let rows = rows.rows(tier, &mut scratch);
                let disk = &mut state.disk_window[tier as usize];
                write_rows(*id, tier, rows, disk, &mut groups, ended);
            }
        }
        groups.write(self.engine.as_ref(), ops)
    }
}
