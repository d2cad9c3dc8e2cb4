//! What an executor runs: functions found by name, called on a worker's hot path.

/// How one call of a function ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function wrote this many bytes of output (at most the output buffer's length).
    Output(usize),
    /// The function returned this (negative) error code.
    Failed(i32),
    /// The input failed validation before the function saw it.
    InvalidInput,
    /// The output did not fit in the buffer.
    OutputTooLarge,
    /// The function panicked (or trapped); the worker survived it.
    Panicked,
}

/// The functions an executor offers. Implementations are called concurrently from every
/// worker thread and must not panic, allocate or lock in `call`.
pub trait Catalog: Send + Sync + 'static {
    /// The executor-wide id of the function called `name`, if there is one. Called once
    /// per name at allocation.
    fn resolve(&self, name: &str) -> Option<u32>;

    /// Runs function `id` (from [`Catalog::resolve`]) on `input`, writing its output into
    /// `output`.
    fn call(&self, id: u32, input: &[u8], output: &mut [u8]) -> Outcome;
}
