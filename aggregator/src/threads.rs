//! The threads `run` serves on: the live path's own runtime (ingest and
//! the hub), sized to a quarter of the cores, and the lower priority of the
//! caller's threads that serve clients, so the live path wins the cores
//! under contention.

/// The live path's runtime, shut down without waiting when dropped (a
/// runtime may not be dropped, waiting, on an async worker).
pub(crate) struct LiveRuntime(pub(crate) Option<tokio::runtime::Runtime>);

impl std::ops::Deref for LiveRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for LiveRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Worker threads of the live path (ingest and the hub): a quarter of the
/// cores, at least one.
pub(crate) fn live_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
}

/// How much lower than the live path the threads serving clients run, in
/// nice steps: under CPU contention Linux then gives the live path (ingest
/// and the hub) about three times their share, so a storm of replays and
/// reconnects slows clients' reads, not the updates every client waits for.
/// Without contention it changes nothing.
pub const CLIENT_NICE: i32 = 5;

/// Sets the calling thread's priority [`CLIENT_NICE`] below the main
/// thread's (Linux: nice is per thread, and a new thread inherits its
/// creator's, so the level is set from the main thread's, never lowered
/// again from an already lowered one). For the `on_thread_start` of the
/// runtime that runs [`crate::run`]: its workers and blocking threads serve
/// WebSocket and HTTP clients, while the live path has a runtime of its
/// own. Best effort: on failure the thread keeps its priority.
pub fn lower_priority() {
    // The main thread's id is the process id.
    let main = Some(rustix::process::getpid());
    if let Ok(base) = rustix::process::getpriority_process(main) {
        let tid = Some(rustix::thread::gettid());
        let _ = rustix::process::setpriority_process(tid, (base + CLIENT_NICE).min(19));
    }
}
