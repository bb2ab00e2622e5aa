//! The store's `Engine` on fjall, for the `store-engines` comparison only:
//! one keyspace per table, every apply one atomic batch persisted with
//! `SyncAll` (as redb's commits are durable).

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use hostpulse_aggregator::store::StoreError;
use hostpulse_aggregator::store::engine::{Engine, Entry, Op, Table};

/// The store over fjall, one keyspace per table; every apply is one atomic
/// batch persisted with `SyncAll` (as redb's commits are).
pub(super) struct Fjall {
    db: Database,
    tables: Vec<Keyspace>,
    dir: PathBuf,
}

fn ferr(e: fjall::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Fjall {
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).open().map_err(ferr)?;
        let tables = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), KeyspaceCreateOptions::default)
                    .map_err(ferr)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            db,
            tables,
            dir: dir.into(),
        })
    }

    fn table(&self, t: Table) -> &Keyspace {
        &self.tables[Table::ALL.iter().position(|x| *x == t).expect("listed")]
    }
}

impl Engine for Fjall {
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put(t, k, v) => batch.insert(self.table(*t), k.as_slice(), v.as_slice()),
                Op::Delete(t, k) => batch.remove(self.table(*t), k.as_slice()),
            }
        }
        batch.commit().map_err(ferr)?;
        self.db.persist(PersistMode::SyncAll).map_err(ferr)
    }

    fn scan(
        &self,
        table: Table,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for g in self.table(table).range(from..to) {
            let (k, v) = g.into_inner().map_err(ferr)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, table: Table, from: &[u8], to: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.table(table).range(from..to).next_back() {
            Some(g) => {
                let (k, v) = g.into_inner().map_err(ferr)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn used_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.db.disk_space().map(Some).map_err(ferr)
    }

    fn file_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
