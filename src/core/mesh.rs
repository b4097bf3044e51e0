//! Cross-core calls as closures (Seastar's and Redpanda's `invoke_on`): a caller hands a closure to
//! the core that owns what it needs; the closure runs there, on that core's [`Shard`], and its
//! result comes back. The core therefore lists no request of any module above it: produce, group
//! work, topic administration and replication hand-overs are each written where they belong.
//!
//! Two glommio channel meshes carry the traffic: one for jobs, one for answers. Every queue is
//! bounded (`cross_core_channel_capacity` entries per pair of cores); a call waits while the
//! target's queue is full.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use tracing::warn;

use super::Shard;

/// An answer crossing back to the caller's core.
type Answer = Box<dyn Any + Send>;

/// A job crossing to another core: run there, on its shard, producing an answer.
type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = Answer>>> + Send>;

/// A job on its way, with where its answer goes.
pub struct Envelope {
    from: usize,
    id: u64,
    job: Job,
}

/// An answer on its way back.
pub struct ReplyEnvelope {
    id: u64,
    answer: Answer,
}

/// Why a cross-core call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("there is no core {core} (cores: {cores})")]
    NoSuchCore { core: usize, cores: usize },
    #[error("core {core} is not answering (shutting down)")]
    Unreachable { core: usize },
}

/// This core's ends of the two meshes and the calls waiting for an answer.
pub(super) struct Mesh {
    requests: Senders<Envelope>,
    replies: Senders<ReplyEnvelope>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    next_call: Cell<u64>,
}

impl Mesh {
    pub(super) fn new(requests: Senders<Envelope>, replies: Senders<ReplyEnvelope>) -> Mesh {
        Mesh { requests, replies, pending: RefCell::new(HashMap::new()), next_call: Cell::new(0) }
    }
}

impl Shard {
    /// Runs `job` on core `core` (inline when it is this one) and returns its result.
    pub async fn invoke_on<R, F, Fut>(self: &Rc<Self>, core: usize, job: F) -> Result<R, MeshError>
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if core >= self.cores {
            return Err(MeshError::NoSuchCore { core, cores: self.cores });
        }
        if core == self.id {
            return Ok(job(self.clone()).await);
        }
        let mesh = &self.mesh;
        let id = mesh.next_call.get();
        mesh.next_call.set(id + 1);
        let (tx, rx) = oneshot::channel();
        let previous = mesh.pending.borrow_mut().insert(id, tx);
        debug_assert!(previous.is_none(), "call ids are unique per core");
        self.metrics.cross_core_sent.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move |shard| Box::pin(async move { Box::new(job(shard).await) as Answer }));
        if mesh.requests.send_to(core, Envelope { from: self.id, id, job }).await.is_err() {
            mesh.pending.borrow_mut().remove(&id);
            return Err(MeshError::Unreachable { core });
        }
        let answer = rx.await.map_err(|_| MeshError::Unreachable { core })?;
        // The answer under `id` is the one this call's job produced: its type is `R`.
        let answer = answer.downcast::<R>();
        debug_assert!(answer.is_ok(), "an answer routed by call id has the caller's type");
        answer.map(|r| *r).map_err(|_| MeshError::Unreachable { core })
    }

    /// Starts the tasks that run other cores' jobs here and route their answers back to callers.
    pub fn start_mesh_tasks(self: &Rc<Self>, mut requests: Receivers<Envelope>, mut replies: Receivers<ReplyEnvelope>) {
        for (_, stream) in requests.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    let shard = shard.clone();
                    shard.metrics.cross_core_served.fetch_add(1, Ordering::Relaxed);
                    glommio::spawn_local(async move {
                        let Envelope { from, id, job } = env;
                        let answer = job(shard.clone()).await;
                        if shard.mesh.replies.send_to(from, ReplyEnvelope { id, answer }).await.is_err() {
                            warn!(to = from, "reply channel closed");
                        }
                    })
                    .detach();
                }
            })
            .detach();
        }
        for (_, stream) in replies.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    let waiting = shard.mesh.pending.borrow_mut().remove(&env.id);
                    debug_assert!(waiting.is_some(), "every answer has a waiting call");
                    if let Some(tx) = waiting {
                        // The caller may have been dropped (its connection closed): nothing to do.
                        let _ = tx.send(env.answer);
                    }
                }
            })
            .detach();
        }
    }
}
