//! Application messages from workers: [`WorkerMessage`], and the bounded queue they wait in
//! for [`ClusterWatcher::messages`](crate::ClusterWatcher::messages).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cluster_ipc::ChannelSender;
use cluster_ipc::protocol::WatcherToWorker;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{SendError, WorkerId};

/// Messages waiting for `messages()`, by count and by payload bytes.
pub(crate) const MESSAGE_QUEUE: usize = 1024;
pub(crate) const MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A message from a worker, with a handle to answer that worker only.
#[derive(Debug)]
pub struct WorkerMessage {
    /// Who sent it.
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// The postcard-encoded payload; see [`decode`](Self::decode).
    pub payload: Vec<u8>,
    reply: ChannelSender<WatcherToWorker>,
    /// Its share of the queue's byte budget, returned when the message is dropped.
    _budget: OwnedSemaphorePermit,
}

impl WorkerMessage {
    pub(crate) fn new(
        id: WorkerId,
        pid: u32,
        payload: Vec<u8>,
        reply: ChannelSender<WatcherToWorker>,
        budget: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            id,
            pid,
            payload,
            reply,
            _budget: budget,
        }
    }

    /// Decodes the payload as `T` (the type the worker sent).
    ///
    /// # Errors
    /// When the payload is not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(&self.payload)
    }

    /// Answers the sender (and only it).
    ///
    /// # Errors
    /// When the worker is gone.
    pub async fn reply<T: Serialize>(&self, message: &T) -> Result<(), SendError> {
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        Ok(self.reply.send(&WatcherToWorker::Message(bytes)).await?)
    }
}

/// Where workers' application messages go: a bounded queue, and a byte budget so a few
/// large messages cannot hold much memory either.
#[derive(Debug, Clone)]
pub(crate) struct MessageSink {
    pub(crate) queue: mpsc::Sender<WorkerMessage>,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// A fresh message queue for `messages()`, counting what it drops in `dropped`.
pub(crate) fn message_queue(
    dropped: Arc<AtomicU64>,
) -> (MessageSink, mpsc::Receiver<WorkerMessage>) {
    let (queue, receiver) = mpsc::channel(MESSAGE_QUEUE);
    (
        MessageSink {
            queue,
            budget: Arc::new(Semaphore::new(MESSAGE_BYTES)),
            dropped,
        },
        receiver,
    )
}

/// Queues one message for `messages()`; `false` (counted) when the queue or the byte
/// budget is full.
pub(crate) fn deliver(
    sink: &MessageSink,
    id: WorkerId,
    pid: u32,
    payload: Vec<u8>,
    reply: &ChannelSender<WatcherToWorker>,
) -> bool {
    let bytes = u32::try_from(payload.len().max(1)).unwrap_or(u32::MAX);
    let Ok(permit) = sink.budget.clone().try_acquire_many_owned(bytes) else {
        sink.dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let message = WorkerMessage::new(id, pid, payload, reply.clone(), permit);
    if sink.queue.try_send(message).is_err() {
        sink.dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}
