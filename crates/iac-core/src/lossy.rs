//! A bounded channel whose sender never blocks and never grows memory: when the receiver falls
//! behind and the buffer is full, items are dropped and counted, and the receiver later gets one
//! *marker* item (built by the channel's `marker` function from the count) exactly where the gap
//! is. Every channel that carries [`crate::DeployEvent`]s is one of these ([`crate::Events`],
//! the admin API's deploy streams), so a consumer that stops reading never stalls a deploy and
//! never makes the process grow.
//!
//! Ordering: items are delivered in send order; a marker stands in for the run of items dropped
//! at that point. After a drop the sender keeps dropping (and counting) until the receiver made
//! room; the marker then goes in first, so it is never lost to a full buffer. When the receiver
//! drains the buffer while a gap is open, it gets the marker at once (it does not wait for the
//! next item).
//!
//! Two slots above `capacity` are reserved for [`LossySender::send_last`], the one item that
//! must arrive (e.g. a deploy's final report) even when the buffer is full: it is preceded by the
//! marker of anything dropped before it.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
pub use tokio::sync::mpsc::error::TryRecvError;

/// Slots kept free for the marker and the last item.
const RESERVED: usize = 2;

/// Shared by the senders and the receiver: how many items were dropped since the last marker.
#[derive(Debug, Default)]
struct Gap {
    dropped: u64,
}

/// The sending half; cheap to clone. [`LossySender::send`] never blocks.
pub struct LossySender<T> {
    tx: mpsc::Sender<T>,
    gap: Arc<Mutex<Gap>>,
    marker: fn(u64) -> T,
}

impl<T> Clone for LossySender<T> {
    fn clone(&self) -> Self {
        LossySender {
            tx: self.tx.clone(),
            gap: self.gap.clone(),
            marker: self.marker,
        }
    }
}

impl<T> std::fmt::Debug for LossySender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossySender")
            .field("free", &self.tx.capacity())
            .finish_non_exhaustive()
    }
}

/// The receiving half.
pub struct LossyReceiver<T> {
    rx: mpsc::Receiver<T>,
    gap: Arc<Mutex<Gap>>,
    marker: fn(u64) -> T,
}

impl<T> std::fmt::Debug for LossyReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyReceiver")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// A channel buffering at most `capacity` items (at least 1) plus the reserved slots; `marker(n)`
/// builds the item that tells the receiver `n` items were dropped.
pub fn channel<T>(capacity: usize, marker: fn(u64) -> T) -> (LossySender<T>, LossyReceiver<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1) + RESERVED);
    let gap = Arc::new(Mutex::new(Gap::default()));
    (
        LossySender {
            tx,
            gap: gap.clone(),
            marker,
        },
        LossyReceiver { rx, gap, marker },
    )
}

fn lock(gap: &Mutex<Gap>) -> MutexGuard<'_, Gap> {
    // The critical sections cannot panic; recover the count even if a holder did.
    gap.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> LossySender<T> {
    /// Queues `item`, or drops and counts it when the buffer is full. Returns whether it was
    /// queued (`false` also when the receiver is gone). Never blocks.
    pub fn send(&self, item: T) -> bool {
        let mut gap = lock(&self.gap);
        if self.tx.is_closed() {
            return false;
        }
        if gap.dropped > 0 && self.tx.capacity() > RESERVED {
            // The receiver made room: close the gap with its marker first.
            if self.tx.try_send((self.marker)(gap.dropped)).is_err() {
                return false;
            }
            gap.dropped = 0;
        }
        if gap.dropped > 0 || self.tx.capacity() <= RESERVED {
            gap.dropped += 1;
            return false;
        }
        self.tx.try_send(item).is_ok()
    }

    /// Queues the final item using the reserved slots (after the marker of any gap), so it
    /// arrives even when the buffer is full. Consumes the sender.
    pub fn send_last(self, item: T) -> bool {
        let mut gap = lock(&self.gap);
        if gap.dropped > 0 && self.tx.try_send((self.marker)(gap.dropped)).is_ok() {
            gap.dropped = 0;
        }
        self.tx.try_send(item).is_ok()
    }

    /// Whether the receiver was dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl<T> LossyReceiver<T> {
    /// The next item, or a marker when the buffer is drained and items were dropped since;
    /// `Err(Empty)` when there is nothing now, `Err(Disconnected)` when every sender is gone and
    /// everything was delivered.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut gap = lock(&self.gap);
        match self.rx.try_recv() {
            Ok(item) => Ok(item),
            Err(_) if gap.dropped > 0 => {
                let n = std::mem::take(&mut gap.dropped);
                Ok((self.marker)(n))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the next item (or marker); `None` once every sender is gone and everything was
    /// delivered.
    pub async fn recv(&mut self) -> Option<T> {
        match self.try_recv() {
            Ok(item) => return Some(item),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        match self.rx.recv().await {
            Some(item) => Some(item),
            None => self.try_recv().ok(),
        }
    }

    /// Items buffered now (markers not counted).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether nothing is buffered now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// A `Stream` of the items (and markers).
    pub fn into_stream(self) -> impl futures::Stream<Item = T> {
        futures::stream::unfold(self, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Item {
        N(u32),
        Dropped(u64),
    }

    fn marker(n: u64) -> Item {
        Item::Dropped(n)
    }

    fn drain(rx: &mut LossyReceiver<Item>) -> Vec<Item> {
        let mut v = Vec::new();
        while let Ok(i) = rx.try_recv() {
            v.push(i);
        }
        v
    }

    #[test]
    fn a_receiver_that_never_reads_holds_at_most_the_capacity() {
        let (tx, mut rx) = channel(8, marker);
        for i in 0..100_000 {
            tx.send(Item::N(i));
        }
        assert_eq!(rx.len(), 8, "the buffer never grows past its capacity");
        let got = drain(&mut rx);
        let expected: Vec<Item> = (0..8)
            .map(Item::N)
            .chain([Item::Dropped(100_000 - 8)])
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_marker_sits_exactly_where_the_gap_is() {
        let (tx, mut rx) = channel(4, marker);
        for i in 0..10 {
            tx.send(Item::N(i)); // 0..4 kept, 4..10 dropped
        }
        assert_eq!(rx.try_recv().unwrap(), Item::N(0));
        assert_eq!(rx.try_recv().unwrap(), Item::N(1));
        // Room for two now: the marker and the next item go in together, in order.
        assert!(tx.send(Item::N(10)));
        assert_eq!(
            drain(&mut rx),
            vec![Item::N(2), Item::N(3), Item::Dropped(6), Item::N(10)]
        );
        // Caught up: nothing is dropped any more.
        for i in 11..14 {
            assert!(tx.send(Item::N(i)));
        }
        assert_eq!(drain(&mut rx), vec![Item::N(11), Item::N(12), Item::N(13)]);
    }

    #[test]
    fn the_last_item_always_arrives_after_the_marker() {
        let (tx, mut rx) = channel(2, marker);
        for i in 0..50 {
            tx.send(Item::N(i));
        }
        assert!(tx.send_last(Item::N(999)));
        assert_eq!(
            drain(&mut rx),
            vec![Item::N(0), Item::N(1), Item::Dropped(48), Item::N(999)]
        );
    }

    #[tokio::test]
    async fn a_gap_at_the_end_is_reported_when_the_senders_are_gone() {
        let (tx, mut rx) = channel(3, marker);
        for i in 0..5 {
            tx.send(Item::N(i));
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(
            got,
            vec![Item::N(0), Item::N(1), Item::N(2), Item::Dropped(2)]
        );
    }

    #[test]
    fn sending_to_a_dropped_receiver_is_not_counted_and_does_not_fail_loudly() {
        let (tx, rx) = channel(1, marker);
        drop(rx);
        assert!(!tx.send(Item::N(1)));
        assert!(tx.is_closed());
        assert_eq!(lock(&tx.gap).dropped, 0);
    }
}
