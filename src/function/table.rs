//! The function table: names to functions, resolved once at allocation.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use super::abi::{check_name, ERR_OUTPUT_TOO_SMALL};
use super::{BuiltinFn, Function, FunctionLibrary, LoadError};

/// A function's index in its [`FunctionTable`]; valid for that table only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionId(u32);

impl FunctionId {
    /// The index in the table.
    pub const fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Names that a table does not hold, all of them, in the order asked.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unknown function(s): {}", .names.join(", "))]
pub struct UnknownFunctions {
    /// The unknown names.
    pub names: Vec<String>,
}

/// Every function an executor offers, by name. Built before serving; read-only (and
/// `Sync`) while workers call through it.
#[derive(Debug, Default)]
pub struct FunctionTable {
    functions: Vec<Function>,
    by_name: HashMap<Arc<str>, FunctionId>,
}

/// `rafi.noop`: returns an empty output.
fn noop(_input: &[u8], _output: &mut [u8]) -> Result<usize, i64> {
    Ok(0)
}

/// `rafi.echo`: copies the input to the output.
fn echo(input: &[u8], output: &mut [u8]) -> Result<usize, i64> {
    output
        .get_mut(..input.len())
        .ok_or(ERR_OUTPUT_TOO_SMALL)?
        .copy_from_slice(input);
    Ok(input.len())
}

impl FunctionTable {
    /// Names of the built-in functions of [`FunctionTable::with_builtins`].
    pub const BUILTINS: [&'static str; 2] = ["rafi.noop", "rafi.echo"];

    /// An empty table.
    pub fn new() -> FunctionTable {
        FunctionTable::default()
    }

    /// A table with the built-in functions: `rafi.noop` (empty output) and `rafi.echo`
    /// (output = input).
    pub fn with_builtins() -> FunctionTable {
        let mut table = FunctionTable::new();
        let fns: [BuiltinFn; 2] = [noop, echo];
        for (name, f) in FunctionTable::BUILTINS.into_iter().zip(fns) {
            // Fresh table, distinct valid names.
            let _ = table.add_builtin(name, f);
        }
        table
    }

    /// Adds a built-in Rust function (a panic in it is caught on each call).
    ///
    /// # Errors
    /// [`LoadError::BadName`] for an invalid name, [`LoadError::DuplicateName`] when the
    /// name is taken; the table is unchanged then.
    pub fn add_builtin(&mut self, name: &str, f: BuiltinFn) -> Result<FunctionId, LoadError> {
        check_name(name.as_bytes()).map_err(|reason| LoadError::BadName {
            library: "built-in".into(),
            index: 0,
            reason,
        })?;
        if self.by_name.contains_key(name) {
            return Err(LoadError::DuplicateName {
                library: "built-in".into(),
                name: name.into(),
            });
        }
        Ok(self.push(Function::builtin(name, f)))
    }

    /// Adds every function of `library`, in its table order; returns their ids.
    ///
    /// # Errors
    /// [`LoadError::DuplicateName`] when one of its names is already in the table; the
    /// table is unchanged then.
    pub fn add_library(&mut self, library: FunctionLibrary) -> Result<Vec<FunctionId>, LoadError> {
        if let Some(f) = library
            .functions()
            .iter()
            .find(|f| self.by_name.contains_key(f.name()))
        {
            return Err(LoadError::DuplicateName {
                library: library.label().to_owned(),
                name: f.name().to_owned(),
            });
        }
        Ok(library
            .into_functions()
            .into_iter()
            .map(|f| self.push(f))
            .collect())
    }

    fn push(&mut self, f: Function) -> FunctionId {
        // Libraries hold at most 2^16 functions each; a table of 2^32 is out of reach.
        let id = FunctionId(self.functions.len() as u32);
        self.by_name.insert(f.shared_name(), id);
        self.functions.push(f);
        id
    }

    /// The id of `name`, if the table has it.
    pub fn id(&self, name: &str) -> Option<FunctionId> {
        self.by_name.get(name).copied()
    }

    /// The ids of `names`, in order (the allocation handshake's function list).
    ///
    /// # Errors
    /// [`UnknownFunctions`] with every name the table does not have.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<FunctionId>, UnknownFunctions> {
        let mut ids = Vec::with_capacity(names.len());
        let mut unknown = Vec::new();
        for name in names {
            match self.id(name) {
                Some(id) => ids.push(id),
                None => unknown.push(name.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(ids)
        } else {
            Err(UnknownFunctions { names: unknown })
        }
    }

    /// The function with id `id`.
    ///
    /// # Panics
    /// When `id` is not from this table.
    #[inline]
    pub fn get(&self, id: FunctionId) -> &Function {
        &self.functions[id.0 as usize]
    }

    /// The function with id `id`, or `None` when `id` is not from this table.
    #[inline]
    pub fn try_get(&self, id: FunctionId) -> Option<&Function> {
        self.functions.get(id.0 as usize)
    }

    /// The function at index `index` ([`FunctionId::index`]), if there is one.
    #[inline]
    pub fn get_index(&self, index: u32) -> Option<&Function> {
        self.functions.get(index as usize)
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Every function with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (FunctionId, &Function)> {
        self.functions
            .iter()
            .enumerate()
            .map(|(i, f)| (FunctionId(i as u32), f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::CallError;
    use crate::protocol::Status;

    #[test]
    fn builtins_resolve_and_run() {
        let t = FunctionTable::with_builtins();
        let ids = t
            .resolve(&["rafi.echo".to_string(), "rafi.noop".to_string()])
            .unwrap();
        let mut out = [0u8; 8];
        assert_eq!(t.get(ids[0]).call(b"hello", &mut out), Ok(5));
        assert_eq!(&out[..5], b"hello");
        assert_eq!(t.get(ids[1]).call(b"hello", &mut out), Ok(0));
        let e = t.get(ids[0]).call(b"too long!", &mut out).unwrap_err();
        assert_eq!(e, CallError::OutputTooSmall { capacity: 8 });
        assert_eq!(e.status(), Status::OutputTooLarge);
        assert_eq!(
            t.resolve(&["x".into(), "rafi.echo".into(), "y".into()]),
            Err(UnknownFunctions {
                names: vec!["x".into(), "y".into()]
            })
        );
    }

    #[test]
    fn names_are_checked_and_unique() {
        let mut t = FunctionTable::with_builtins();
        assert!(matches!(
            t.add_builtin("rafi.echo", noop),
            Err(LoadError::DuplicateName { .. })
        ));
        assert!(matches!(
            t.add_builtin("", noop),
            Err(LoadError::BadName { .. })
        ));
        assert!(matches!(
            t.add_builtin(&"x".repeat(256), noop),
            Err(LoadError::BadName { .. })
        ));
        assert!(matches!(
            t.add_builtin("a\nb", noop),
            Err(LoadError::BadName { .. })
        ));
        assert!(t.add_builtin(&"x".repeat(255), noop).is_ok());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn errors_map_to_statuses_and_codes() {
        assert_eq!(CallError::from_code(-1, 0), CallError::InvalidInput);
        assert_eq!(CallError::InvalidInput.status(), Status::ValidationFailed);
        assert_eq!(
            CallError::from_code(-3, 0).status(),
            Status::FunctionPanicked
        );
        let f = CallError::from_code(-1000, 0);
        assert_eq!((f.status(), f.error_code()), (Status::FunctionError, -1000));
        assert_eq!(CallError::from_code(i64::MIN, 0).error_code(), i32::MIN);
        assert_eq!(CallError::Panicked.error_code(), 0);
        let o = CallError::OutputOverrun {
            len: 9,
            capacity: 8,
        };
        assert_eq!((o.status(), o.error_code()), (Status::OutputTooLarge, 0));
    }

    #[test]
    fn a_panicking_builtin_is_an_error_and_the_table_goes_on() {
        let mut t = FunctionTable::with_builtins();
        let id = t
            .add_builtin("boom", |_, _| panic!("boom (expected in this test)"))
            .unwrap();
        let mut out = [0u8; 4];
        assert_eq!(t.get(id).call(b"", &mut out), Err(CallError::Panicked));
        let echo = t.id("rafi.echo").unwrap();
        assert_eq!(t.get(echo).call(b"ok", &mut out), Ok(2));
    }
}
