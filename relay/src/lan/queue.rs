//! One port's bounded queue of frames for its client.
//!
//! Not tokio's `mpsc`: its storage comes in blocks of 32 frames that a channel keeps for
//! reuse once it has grown, so a VM whose queue once held a boot storm's broadcasts kept
//! about 3 KiB for good (docs/benchmarks.md, "Boot storm"). Here the frames sit in a
//! `VecDeque` that is given back when a burst has drained.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use super::lock;

/// Room a drained queue keeps: a port's everyday trickle never reallocates, a burst's
/// larger buffer is freed once it is out.
const KEPT_CAPACITY: usize = 32;

/// A queue of at most `bound` frames: the switch's end and the transport's end.
pub(crate) fn port_queue(bound: usize) -> (QueueSender, PortReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        len: AtomicUsize::new(0),
        receiver: AtomicWaker::new(),
    });
    let sender = QueueSender {
        shared: shared.clone(),
        bound,
    };
    (sender, PortReceiver { shared })
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// `state.frames.len()`, readable without the lock: a flooded port refuses most frames
    /// it is offered, and refusing must stay as cheap as a failed atomic.
    len: AtomicUsize,
    /// The transport's task waiting for a frame.
    receiver: AtomicWaker,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    Full,
    /// The transport has gone; the frame no longer matters.
    Closed,
}

/// Why no frame was taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    Empty,
    /// The port has left its LAN and every frame has been taken.
    Disconnected,
}

/// The switch's end of a port's queue.
#[derive(Debug)]
pub(crate) struct QueueSender {
    shared: Arc<Shared>,
    bound: usize,
}

/// Room past the bound that only control frames may take (see [`QueueSender::try_send_control`]).
pub(crate) const CONTROL_ROOM: usize = 64;

impl QueueSender {
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        self.send_within(frame, self.bound)
    }

    /// As [`try_send`](Self::try_send), with [`CONTROL_ROOM`] more frames of room: for the
    /// few frames that must not wait behind bulk traffic (the gateway's ARP and DHCP).
    pub(crate) fn try_send_control(&self, frame: Bytes) -> Result<(), SendError> {
        self.send_within(frame, self.bound + CONTROL_ROOM)
    }

    fn send_within(&self, frame: Bytes, bound: usize) -> Result<(), SendError> {
        if self.shared.len.load(Relaxed) >= bound {
            return Err(SendError::Full);
        }
        let mut state = lock(&self.shared.state);
        if state.receiver_gone {
            return Err(SendError::Closed);
        }
        if state.frames.len() >= bound {
            return Err(SendError::Full);
        }
        state.frames.push_back(frame);
        self.shared.len.store(state.frames.len(), Relaxed);
        drop(state);
        self.shared.receiver.wake();
        Ok(())
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        lock(&self.shared.state).sender_gone = true;
        self.shared.receiver.wake();
    }
}

/// The frames waiting to be sent to one port's client.
#[derive(Debug)]
pub(crate) struct PortReceiver {
    shared: Arc<Shared>,
}

impl PortReceiver {
    pub(crate) fn try_recv(&mut self) -> Result<Bytes, TryRecvError> {
        let mut state = lock(&self.shared.state);
        let Some(frame) = state.frames.pop_front() else {
            return Err(match state.sender_gone {
                true => TryRecvError::Disconnected,
                false => TryRecvError::Empty,
            });
        };
        self.shared.len.store(state.frames.len(), Relaxed);
        if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
            state.frames = VecDeque::new();
        }
        Ok(frame)
    }

    /// The next frame; `None` once the port has left and its frames are all taken.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.try_recv() {
            Ok(frame) => return Poll::Ready(Some(frame)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        self.shared.receiver.register(cx.waker());
        // A frame queued between the first look and the registration woke no one.
        match self.try_recv() {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Cancel-safe: a frame is only taken when it is returned.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for PortReceiver {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.receiver_gone = true;
        // Queued frames would otherwise live as long as the LAN's handle on the queue.
        state.frames = VecDeque::new();
        self.shared.len.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n; 60])
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_the_bound_holds() {
        let (tx, mut rx) = port_queue(2);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(2)).unwrap();
        assert_eq!(tx.try_send(frame(3)), Err(SendError::Full));
        assert_eq!(rx.recv().await.unwrap()[0], 1);
        assert_eq!(rx.try_recv().unwrap()[0], 2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn control_frames_have_room_past_the_bound() {
        let (tx, _rx) = port_queue(2);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(2)).unwrap();
        assert_eq!(tx.try_send(frame(3)), Err(SendError::Full));
        for n in 0..CONTROL_ROOM {
            tx.try_send_control(frame(n as u8)).unwrap();
        }
        assert_eq!(tx.try_send_control(frame(0)), Err(SendError::Full));
        assert_eq!(tx.try_send(frame(3)), Err(SendError::Full));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_frame_and_for_the_end() {
        let (tx, mut rx) = port_queue(4);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.try_send(frame(7)).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let (first, end) = waiting.await.unwrap();
        assert_eq!(first.unwrap()[0], 7);
        assert!(end.is_none(), "the port left");
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let (tx, mut rx) = port_queue(256);
        for n in 0..200 {
            tx.try_send(frame(n)).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(lock(&rx.shared.state).frames.capacity(), 0);
    }

    #[test]
    fn frames_for_a_transport_that_left_are_refused_and_freed() {
        let (tx, rx) = port_queue(4);
        tx.try_send(frame(1)).unwrap();
        drop(rx);
        assert!(lock(&tx.shared.state).frames.is_empty());
        assert_eq!(tx.try_send(frame(2)), Err(SendError::Closed));
    }
}
