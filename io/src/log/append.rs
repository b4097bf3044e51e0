//! The append path of the log: offsets are assigned synchronously in call order, the batch is
//! queued for the writer task, and the call resolves once written (and synced, per policy). A full
//! queue makes appends wait for room (`wait_for_room`); exclusive operations wait for it empty.

use super::*;

impl Log {
    /// Appends a batch; resolves once written (and synced under `Durability::Always`).
    pub async fn append(&self, batch: AppendBatch) -> Result<Appended> {
        let AppendBatch { record_count, max_timestamp, payload } = batch;
        self.append_with(record_count, max_timestamp, move |_| (payload, None)).await
    }

    /// Appends a batch built once its base offset is known: `build(base_offset)` runs synchronously
    /// when the offset is assigned and returns the payload (e.g. with the offset patched in) and,
    /// optionally, the payload's CRC32C if the caller already computed it (saves one pass).
    pub async fn append_with(
        &self,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> (Bytes, Option<u32>),
    ) -> Result<Appended> {
        let admitted = self
            .append_or_reject::<std::convert::Infallible>(record_count, max_timestamp, |base| {
                let (payload, crc) = build(base);
                Admission::Append(payload, crc)
            })
            .await?;
        Ok(admitted.unwrap_or_else(|never| match never {}))
    }

    /// Like [`Log::append_with`], but `build` may refuse the batch after seeing its base offset
    /// (e.g. a duplicate or out-of-order producer sequence): then nothing is queued, no offset is
    /// used, and the refusal is returned as `Ok(Err(reason))`. `build` runs synchronously with the
    /// offset assignment, so a check it makes and the append it admits cannot be interleaved with
    /// another append.
    pub async fn append_or_reject<R>(
        &self,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> Admission<R>,
    ) -> Result<std::result::Result<Appended, R>> {
        self.append_inner(None, record_count, max_timestamp, build).await
    }

    /// Appends a batch at `base_offset` instead of the next offset: a follower copying its leader's
    /// batches keeps the leader's offsets, which skip what the leader's compaction removed.
    /// `base_offset` below the offset the next append would get is refused (`InvalidBatch`).
    pub async fn append_at(&self, base_offset: u64, batch: AppendBatch) -> Result<Appended> {
        let AppendBatch { record_count, max_timestamp, payload } = batch;
        let admitted = self
            .append_inner::<std::convert::Infallible>(Some(base_offset), record_count, max_timestamp, |_| {
                Admission::Append(payload, None)
            })
            .await?;
        Ok(admitted.unwrap_or_else(|never| match never {}))
    }

    async fn append_inner<R>(
        &self,
        at: Option<u64>,
        record_count: u32,
        max_timestamp: i64,
        build: impl FnOnce(u64) -> Admission<R>,
    ) -> Result<std::result::Result<Appended, R>> {
        if record_count == 0 {
            return Err(Error::InvalidBatch("record_count must be >= 1".into()));
        }
        self.wait_for_room(false).await?;
        let sh = self.shared();
        // No await from here until the request is queued: offsets follow queue order.
        let next = sh.state.borrow().assigned_offset;
        let base = at.unwrap_or(next);
        if base < next || base.checked_add(u64::from(record_count)).is_none() {
            return Err(Error::InvalidBatch(format!(
                "append at offset {base} with {record_count} offsets: the log's next offset is {next}"
            )));
        }
        let (payload, crc) = match build(base) {
            Admission::Append(p, c) => (p, c),
            Admission::Reject(r) => return Ok(Err(r)),
        };
        if payload.len() > sh.config.get().max_batch_bytes {
            return Err(Error::BatchTooLarge { size: payload.len(), limit: sh.config.get().max_batch_bytes });
        }
        sh.state.borrow_mut().assigned_offset = base + u64::from(record_count);
        let (reply, rx) = oneshot::channel();
        sh.queue.borrow_mut().push_back(Request::Append {
            header_base: base,
            explicit: at.is_some(),
            record_count,
            max_timestamp,
            payload,
            crc,
            reply,
        });
        sh.work.notify(1);
        rx.await.map_err(|_| Error::Closed { path: sh.dir.clone() })?.map(Ok)
    }

    /// `Ok(true)` when an append (or, with `exclusive`, a control op) may be queued now.
    fn room_now(&self, exclusive: bool) -> Result<bool> {
        let sh = self.shared();
        let st = sh.state.borrow();
        if st.closed {
            return Err(Error::Closed { path: sh.dir.clone() });
        }
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned { path: sh.dir.clone(), cause: cause.clone() });
        }
        Ok(!st.exclusive && (exclusive || sh.queue.borrow().len() < sh.config.get().max_pending_appends))
    }

    pub(super) async fn wait_for_room(&self, exclusive: bool) -> Result<()> {
        while !self.room_now(exclusive)? {
            let listener = self.shared().room.listen();
            if !self.room_now(exclusive)? {
                listener.await;
            }
        }
        Ok(())
    }
}
