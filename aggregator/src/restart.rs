//! History across a restart: every host topic's history kept in the store
//! at a clean shutdown, and taken back into the hub at the next start, so
//! resumes are served across it.

use crate::{RunError, hub, store};

/// Topics read back or written per store transaction.
const HISTORY_BATCH: usize = 256;

/// Takes the history kept at the last clean shutdown back into the hub,
/// topic by topic (memory holds one batch of topics at a time).
pub(crate) async fn restore_history(
    store: &store::Store,
    hub: &hub::HubHandle,
) -> Result<(), RunError> {
    let started = std::time::Instant::now();
    let (mut topics, mut updates) = (0usize, 0usize);
    let mut after: Vec<u8> = Vec::new();
    loop {
        let view = store.view();
        let from = after.clone();
        let (batch, last) = tokio::task::spawn_blocking(move || {
            store::history::take(view.engine.as_ref(), &from, HISTORY_BATCH)
        })
        .await
        .map_err(|e| RunError::Live(e.to_string()))??;
        for (_, restored) in batch {
            topics += 1;
            updates += restored.updates.len();
            let _ = hub
                .send(hub::Command::Restore {
                    updates: restored.updates,
                    local: restored.local,
                })
                .await;
        }
        match last {
            Some(k) => after = k,
            None => break,
        }
    }
    if topics > 0 {
        tracing::info!(
            topics,
            updates,
            took_ms = started.elapsed().as_millis() as u64,
            "history restored from the store"
        );
    }
    Ok(())
}

/// Writes every host topic's history to the store (after the last client
/// and agent are gone, before the store closes), so the next start can
/// serve resumes across the restart.
pub(crate) async fn save_history(store: &store::Store, hub: &hub::HubHandle) {
    let Some(topics) = hub.ask(|reply| hub::Command::Snapshot { reply }).await else {
        return;
    };
    let view = store.view();
    let started = std::time::Instant::now();
    let saved = tokio::task::spawn_blocking(move || {
        let rows = topics
            .into_iter()
            .map(|(t, local)| (t.topic.clone(), local, t.history.all_after(0)));
        store::history::save(view.engine.as_ref(), rows, HISTORY_BATCH)
    })
    .await;
    match saved {
        Ok(Ok(topics)) => tracing::info!(
            topics,
            took_ms = started.elapsed().as_millis() as u64,
            "history kept in the store for the next start"
        ),
        Ok(Err(e)) => tracing::error!(cause = %e, "store: history not kept"),
        Err(e) => tracing::error!(cause = %e, "store: history not kept"),
    }
}
