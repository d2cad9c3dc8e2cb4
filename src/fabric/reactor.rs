//! Completion channels in tokio's reactor, for the async client API.

use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;

use super::CompletionChannel;

/// A completion channel that keeps its file descriptor open while tokio watches it.
#[derive(Debug)]
pub struct ChannelFd<C: CompletionChannel>(pub C);

impl<C: CompletionChannel> AsRawFd for ChannelFd<C> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers `channel`'s descriptor with the current tokio runtime's reactor.
///
/// # Errors
/// When the reactor refuses the descriptor.
///
/// # Panics
/// Outside a tokio runtime (as tokio does).
pub fn register<C: CompletionChannel>(channel: C) -> std::io::Result<AsyncFd<ChannelFd<C>>> {
    // SAFETY: `ChannelFd` owns a handle on the channel, and `CompletionChannel` promises
    // that `as_raw_fd` names the same open descriptor for as long as a handle lives; so
    // the descriptor stays open and unchanged for the whole life of the `AsyncFd`.
    unsafe { AsyncFd::register(ChannelFd(channel)) }.map_err(std::io::Error::from)
}
