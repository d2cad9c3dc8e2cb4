//! The async invocation API on tokio: post, spin briefly, then sleep on the completion
//! channel registered with tokio's reactor, so that a task waiting for a result burns no
//! CPU and an allocation with nothing in flight costs nothing at all.

use std::time::{Duration, Instant};

use crate::fabric::{reactor, CompletionChannel, Fabric};

use super::allocation::{Allocation, FunctionId};
use super::error::InvokeError;

/// How long an async invocation polls before it parks on the channel: about one round
/// trip, so that a fast answer does not pay a reactor wake-up.
const ASYNC_SPIN: Duration = Duration::from_micros(20);

impl<F: Fabric> Allocation<F> {
    /// Invokes `f` on `input` and resolves to its output. Works on any tokio runtime
    /// (current-thread included); while it waits it sleeps in the reactor.
    ///
    /// # Errors
    /// See [`InvokeError`].
    pub async fn invoke_async(
        &mut self,
        f: FunctionId,
        input: &[u8],
    ) -> Result<Vec<u8>, InvokeError> {
        let link = self.pick_link()?;
        let (slot, id) = self.links[link].start(f.0, input)?;
        let timeout = self.options.timeout;
        let start = Instant::now();
        let outcome = loop {
            if let Some(event) = self.poll_for(link, slot, id)? {
                break event;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                self.links[link].abandon(slot, id);
                return Err(InvokeError::TimedOut(timeout));
            }
            if waited < ASYNC_SPIN {
                tokio::task::yield_now().await;
                continue;
            }
            if !self.executor_alive() {
                self.kill_all("its control connection closed");
                continue;
            }
            // Arm, look once more, then sleep until the channel fires (or a short while,
            // to notice a dead executor whose completions never come).
            self.links[link].arm();
            if let Some(event) = self.poll_for(link, slot, id)? {
                break event;
            }
            let nap = (timeout - waited).min(Duration::from_millis(10));
            self.wait_channel(link, nap).await;
        };
        let len = outcome?;
        let output = self.links[link].output(slot, len).to_vec();
        self.links[link].release(slot, id);
        Ok(output)
    }

    /// Polls `link` once for the end of invocation `id` in `slot`.
    fn poll_for(
        &mut self,
        link: usize,
        slot: u16,
        id: u64,
    ) -> Result<Option<Result<usize, InvokeError>>, InvokeError> {
        while let Some(event) = self.links[link].poll_event()? {
            if event.slot == slot && event.id == id {
                return Ok(Some(event.outcome));
            }
            self.links[link].settle_stray(&event);
        }
        Ok(None)
    }

    /// Sleeps in the reactor until the link's channel is readable or `nap` passes, then
    /// acknowledges the events.
    async fn wait_channel(&mut self, link: usize, nap: Duration) {
        let l = &mut self.links[link];
        if l.async_fd.is_none() {
            match reactor::register(l.channel.clone()) {
                Ok(fd) => l.async_fd = Some(fd),
                Err(_) => {
                    // No reactor for this fd: fall back to a short timer.
                    tokio::time::sleep(nap.min(Duration::from_micros(100))).await;
                    return;
                }
            }
        }
        let Some(fd) = l.async_fd.as_ref() else {
            return;
        };
        if let Ok(Ok(mut ready)) = tokio::time::timeout(nap, fd.readable()).await {
            ready.clear_ready();
        }
        let _ = l.channel.get_event(Some(Duration::ZERO));
    }
}
