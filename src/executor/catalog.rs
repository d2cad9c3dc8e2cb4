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

/// Where a connection's function index leads: the executor's catalog, or a library the
/// client shipped with its allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Catalog(u32),
    Shipped(crate::function::FunctionId),
}

/// Calls `target` with the catalog or the allocation's shipped functions.
#[inline]
pub(crate) fn call_target<C: Catalog>(
    target: Target,
    catalog: &C,
    shipped: Option<&crate::function::FunctionTable>,
    input: &[u8],
    output: &mut [u8],
) -> Outcome {
    match (target, shipped) {
        (Target::Catalog(id), _) => catalog.call(id, input, output),
        (Target::Shipped(id), Some(table)) => table.call(id.index(), input, output),
        // A shipped target without its table cannot be built (the session makes both).
        (Target::Shipped(_), None) => Outcome::Failed(crate::function::abi::ERR_INTERNAL as i32),
    }
}

/// The executor's usual catalog: built-ins and loaded function libraries.
impl Catalog for crate::function::FunctionTable {
    fn resolve(&self, name: &str) -> Option<u32> {
        self.id(name).map(crate::function::FunctionId::index)
    }

    #[inline]
    fn call(&self, id: u32, input: &[u8], output: &mut [u8]) -> Outcome {
        use crate::function::CallError;
        let Some(function) = self.get_index(id) else {
            // Ids come from `resolve` on this table; anything else is a bug upstream.
            return Outcome::Failed(crate::function::abi::ERR_INTERNAL as i32);
        };
        match function.call(input, output) {
            Ok(len) => Outcome::Output(len),
            Err(CallError::InvalidInput) => Outcome::InvalidInput,
            Err(CallError::OutputTooSmall { .. } | CallError::OutputOverrun { .. }) => {
                Outcome::OutputTooLarge
            }
            Err(CallError::Panicked) => Outcome::Panicked,
            Err(e @ CallError::Failed { .. }) => Outcome::Failed(e.error_code()),
        }
    }
}
