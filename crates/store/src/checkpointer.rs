//! The embedded store's WAL checkpoints, on a thread of their own.
//!
//! In WAL mode SQLite appends each commit to the log and copies the pages back into the
//! database file at a checkpoint, which ends by waiting for the file to reach the disk. Run
//! by the committing connection (SQLite's autocheckpoint), that wait stalled the writer: a
//! bulk import's writer spent most of its time off the CPU there, and the whole pipeline
//! behind it waited. Here a thread with a connection of its own checkpoints while the writer
//! goes on appending: a PASSIVE checkpoint takes no lock a writer needs.
//!
//! The log is also rewound here once it has grown long. SQLite rewinds it by itself only
//! when a writer begins while no reader is inside the log, and under a steady stream of
//! short reads (a bulk import's checks, a busy API) there always is one: the log then grows
//! without bound, and every commit appends to fresh file blocks. A RESTART checkpoint waits
//! (busy timeout) for those readers to finish, so the next commit writes from the start of
//! the file again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sql::Conn;

/// Resources written between checkpoints while writes keep coming (a bulk import's chunk).
const EVERY: u64 = 5_000;
/// How long after a smaller write the log is checkpointed anyway.
const IDLE: Duration = Duration::from_secs(1);
/// The log length (4 KiB pages) past which it is rewound.
const RESTART_FRAMES: i64 = 25_000;

/// Handle of the checkpoint thread; dropping it runs a last checkpoint and joins the thread.
pub(crate) struct Checkpointer {
    written: Arc<AtomicU64>,
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection to the store's database of its own.
    pub(crate) fn start(mut conn: Box<dyn Conn>) -> std::io::Result<Checkpointer> {
        let written = Arc::new(AtomicU64::new(0));
        let (wake, woken) = sync_channel::<()>(1);
        let counted = written.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let mut since = 0u64;
                let mut dirty = false;
                let mut last = Instant::now();
                loop {
                    let r = woken.recv_timeout(IDLE);
                    let stop = r == Err(RecvTimeoutError::Disconnected);
                    dirty |= r.is_ok();
                    since += counted.swap(0, Ordering::Relaxed);
                    if since >= EVERY || (dirty && (stop || last.elapsed() >= IDLE)) {
                        checkpoint(conn.as_mut());
                        (since, dirty, last) = (0, false, Instant::now());
                    }
                    if stop {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            written,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Tells the thread a transaction committed, having written `versions` resources.
    pub(crate) fn committed(&self, versions: u64) {
        self.written.fetch_add(versions, Ordering::Relaxed);
        if let Some(w) = &self.wake {
            // Full means a wake-up is already pending.
            let _ = w.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checkpoint(conn: &mut dyn Conn) {
    let frames = match conn.query("PRAGMA wal_checkpoint(PASSIVE)", &[]) {
        Ok(rows) => rows.first().map(|r| r[1].int()).unwrap_or(0),
        Err(e) => {
            tracing::debug!(error = %e, "The WAL could not be checkpointed.");
            return;
        }
    };
    if frames > RESTART_FRAMES {
        if let Err(e) = conn.batch("PRAGMA wal_checkpoint(RESTART)") {
            tracing::debug!(error = %e, frames, "The WAL could not be restarted yet.");
        }
    }
}
