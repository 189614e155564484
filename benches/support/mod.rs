//! What `benches/overhead.rs` and `benches/scaling.rs` share: the job workloads and
//! the hand-rolled pool of worker tasks on one `mpsc` receiver behind a mutex.
//! Included by each with `#[path]` (not a bench target of its own).
#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug)]
pub enum Load {
    Noop,
    Yield,
    Cpu,
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Load::Noop => "noop",
            Load::Yield => "yield",
            Load::Cpu => "cpu",
        }
    }
}

/// One job of the given workload.
pub async fn job(load: Load, i: usize) -> usize {
    match load {
        Load::Noop => black_box(i),
        Load::Yield => {
            tokio::task::yield_now().await;
            black_box(i)
        }
        Load::Cpu => {
            // About 1 µs of arithmetic.
            let mut h = i as u64;
            for _ in 0..300 {
                h = black_box(
                    h.wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407),
                );
            }
            (h & 1) as usize
        }
    }
}

/// A boxed job and where its output goes: what a hand-rolled pool queues.
pub type BoxJob = (
    Pin<Box<dyn Future<Output = usize> + Send>>,
    oneshot::Sender<usize>,
);

/// `k` worker tasks sharing `rx` behind a `tokio::sync::Mutex`, each running the
/// jobs it receives and sending their outputs back, until the senders are gone:
/// the hand-rolled floor (no cancellation, timeouts or stats).
pub fn mutex_mpsc_workers(rx: mpsc::Receiver<BoxJob>, k: usize) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..k)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((fut, reply)) = next else { break };
                    let _ = reply.send(fut.await);
                }
            })
        })
        .collect()
}
