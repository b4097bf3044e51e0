//! A one-way flag tasks can wait for: set once (shutdown began, a connection was aborted), then
//! every waiter wakes and every later check sees it. Single-threaded (one per core or connection).

use std::cell::Cell;
use std::future::Future;

use event_listener::Event;

#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    event: Event,
}

impl Latch {
    /// Sets the latch and wakes every waiter (setting it again changes nothing).
    pub fn set(&self) {
        self.set.set(true);
        self.event.notify(usize::MAX);
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the latch is set.
    pub async fn wait(&self) {
        loop {
            if self.set.get() {
                return;
            }
            // Listen before the second check: a set in between is not missed.
            let listener = self.event.listen();
            if self.set.get() {
                return;
            }
            listener.await;
        }
    }

    /// Runs `work` until it finishes (`Some` of its output) or the latch is set (`None`; `work`
    /// is dropped).
    pub async fn unless_set<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(work.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}
