//! Loading function libraries: dlopen from a path, or from bytes through a sealed memfd.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::slice;
use std::sync::Arc;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use thiserror::Error;

use super::abi::{
    check_name, AbiVersionFn, TableFn, ABI_VERSION, ABI_VERSION_SYMBOL, MAX_FUNCTIONS,
    MAX_NAME_LEN, TABLE_SYMBOL,
};
use super::Function;

/// Why a function name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than 255 bytes.
    #[error("{len} bytes long, more than {MAX_NAME_LEN}")]
    TooLong {
        /// Its length (at least 256 for a library's name, which is read no further).
        len: usize,
    },
    /// The name is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// The name contains a control character.
    #[error("contains a control character")]
    ControlCharacter,
}

/// Why a function library could not be loaded, or its functions not added to a table.
/// `library` is the path, `memfd:NAME` for one loaded from bytes, or `built-in`.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file cannot be opened (missing, no permission, ...).
    #[error("cannot open function library {path}: {source}")]
    Io {
        /// The path as given.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The bytes could not be put in a memfd.
    #[error("cannot put function library {name:?} in a memfd: {source}")]
    Memfd {
        /// The name given.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The name given to [`FunctionLibrary::from_bytes`] contains a NUL byte.
    #[error("function library name {name:?} contains a NUL byte")]
    LibraryName {
        /// The name given.
        name: String,
    },
    /// The dynamic loader refused the file: not a shared library, wrong architecture,
    /// missing dependencies or undefined symbols (libraries are bound eagerly).
    #[error("{library} is not a loadable shared library: {reason}")]
    NotALibrary {
        /// Which library.
        library: String,
        /// The loader's message.
        reason: String,
    },
    /// The library lacks one of the two ABI symbols.
    #[error("{library} does not export {symbol} (is it a rafi function library?)")]
    MissingSymbol {
        /// Which library.
        library: String,
        /// The symbol.
        symbol: &'static str,
    },
    /// The library was built for another version of the ABI.
    #[error("{library} has function ABI version {found}; this rafi speaks version {expected}")]
    AbiVersion {
        /// Which library.
        library: String,
        /// The version it returned.
        found: u32,
        /// [`ABI_VERSION`].
        expected: u32,
    },
    /// The table is empty.
    #[error("{library} declares no functions")]
    NoFunctions {
        /// Which library.
        library: String,
    },
    /// The table claims implausibly many entries.
    #[error("{library} declares {count} functions, more than {max}")]
    TooManyFunctions {
        /// Which library.
        library: String,
        /// The count it returned.
        count: usize,
        /// [`MAX_FUNCTIONS`](super::abi::MAX_FUNCTIONS).
        max: usize,
    },
    /// The table pointer is NULL or misaligned.
    #[error("{library} returned a null or misaligned function table")]
    BadTable {
        /// Which library.
        library: String,
    },
    /// An entry's name is NULL.
    #[error("{library}: entry {index} of the function table has a null name")]
    NullName {
        /// Which library.
        library: String,
        /// The entry.
        index: usize,
    },
    /// An entry's function pointer is NULL.
    #[error("{library}: function {name:?} (entry {index}) has a null entry point")]
    NullFunction {
        /// Which library.
        library: String,
        /// The entry.
        index: usize,
        /// Its name.
        name: String,
    },
    /// An entry's name is not acceptable.
    #[error("{library}: entry {index} of the function table has a name that is {reason}")]
    BadName {
        /// Which library.
        library: String,
        /// The entry.
        index: usize,
        /// What is wrong with it.
        reason: NameError,
    },
    /// A name appears twice: in one library, or in a library and the table it is added to.
    #[error("function {name:?} of {library} is already defined")]
    DuplicateName {
        /// The library that brought the second one.
        library: String,
        /// The name.
        name: String,
    },
}

/// A loaded library's handle, and the memfd it came from, if any. Fields drop in order:
/// the library is closed before the memfd guard looks at whether it is gone.
pub(crate) struct Loaded {
    _library: Library,
    _memfd: Option<MemfdGuard>,
}

/// The memfd behind a library loaded from bytes, and its `/proc/self/fd/N` path.
struct MemfdGuard {
    fd: Option<OwnedFd>,
    path: PathBuf,
}

impl Drop for MemfdGuard {
    fn drop(&mut self) {
        // glibc's dlopen matches an already loaded object by its path name before it looks
        // at the file. If the library stays resident after dlclose (a library that
        // registered thread-local destructors, as Rust ones do, is never unloaded), a later
        // memfd that reuses this fd number would dlopen to the old library. So the number
        // is never given back while an object is loaded under it.
        // SAFETY: RTLD_NOLOAD maps nothing and runs no code; it only finds a resident
        // object (and takes a reference, which `close` returns).
        match unsafe { Library::open(Some(&self.path), RTLD_NOW | libc::RTLD_NOLOAD) } {
            Ok(resident) => {
                let _ = resident.close();
                std::mem::forget(self.fd.take());
            }
            Err(_) => drop(self.fd.take()),
        }
    }
}

/// A loaded function library: its functions, which keep it loaded while any lives.
#[derive(Debug)]
pub struct FunctionLibrary {
    label: String,
    functions: Vec<Function>,
}

impl FunctionLibrary {
    /// Loads the library at `path` (a path on this node; relative paths are relative to
    /// the working directory, never searched for), checks its ABI version and reads its
    /// function table. The library's initializers run.
    ///
    /// # Errors
    /// [`LoadError`]: the file is missing or unreadable, not a loadable shared library,
    /// lacks the ABI symbols, has another ABI version, or declares a bad table (none, null
    /// entries, bad or duplicate names).
    pub fn open(path: impl AsRef<Path>) -> Result<FunctionLibrary, LoadError> {
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let absolute = std::fs::canonicalize(path).map_err(io)?;
        let label = path.display().to_string();
        if !std::fs::metadata(&absolute).map_err(io)?.is_file() {
            return Err(LoadError::NotALibrary {
                library: label,
                reason: "not a regular file".into(),
            });
        }
        let library = dlopen(&absolute, &label)?;
        FunctionLibrary::read(library, None, label)
    }

    /// Loads a library from its bytes (e.g. shipped by a client at allocation): writes
    /// them to a sealed memfd named `name` and loads that, without touching the file
    /// system. Otherwise as [`FunctionLibrary::open`]; the library is labelled
    /// `memfd:NAME`.
    ///
    /// # Errors
    /// As [`FunctionLibrary::open`], plus [`LoadError::LibraryName`] and
    /// [`LoadError::Memfd`].
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<FunctionLibrary, LoadError> {
        let label = format!("memfd:{name}");
        let memfd = memfd_with(name, bytes)?;
        let library = dlopen(&memfd.path, &label);
        // On error, `memfd` is closed here.
        FunctionLibrary::read(library?, Some(memfd), label)
    }

    fn read(
        library: Library,
        memfd: Option<MemfdGuard>,
        label: String,
    ) -> Result<FunctionLibrary, LoadError> {
        let entries = read_table(&library, &label)?;
        let loaded = Arc::new(Loaded {
            _library: library,
            _memfd: memfd,
        });
        let functions = entries
            .into_iter()
            .map(|(name, call)| Function::native(&name, call, loaded.clone()))
            .collect();
        Ok(FunctionLibrary { label, functions })
    }

    /// The library's label: the path it was opened from, or `memfd:NAME`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its functions, in table order.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Its functions, in table order (they keep the library loaded).
    pub fn into_functions(self) -> Vec<Function> {
        self.functions
    }
}

/// dlopen with eager binding (nothing left to resolve on a call) and local symbols.
fn dlopen(path: &Path, label: &str) -> Result<Library, LoadError> {
    // SAFETY: loading a library runs its initializers; loading code into the executor is
    // the purpose here, and the library's author is trusted as the ABI says.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
        LoadError::NotALibrary {
            library: label.to_owned(),
            reason: e.to_string(),
        }
    })
}

/// A sealed memfd holding `bytes`.
fn memfd_with(name: &str, bytes: &[u8]) -> Result<MemfdGuard, LoadError> {
    let memfd_err = |source| LoadError::Memfd {
        name: name.to_owned(),
        source,
    };
    // The kernel takes names of at most 249 bytes.
    let short = &name.as_bytes()[..name.len().min(249)];
    let cname = CString::new(short).map_err(|_| LoadError::LibraryName {
        name: name.to_owned(),
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string; the flags are valid.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(memfd_err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = File::from(fd);
    file.write_all(bytes).map_err(memfd_err)?;
    // Nobody may change the code once it is loaded.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a valid fd we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(memfd_err(io::Error::last_os_error()));
    }
    let fd = OwnedFd::from(file);
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok(MemfdGuard { fd: Some(fd), path })
}

/// Checks the ABI version and reads the function table.
fn read_table(
    library: &Library,
    label: &str,
) -> Result<Vec<(String, super::abi::RawFunction)>, LoadError> {
    let missing = |symbol| LoadError::MissingSymbol {
        library: label.to_owned(),
        symbol,
    };
    // SAFETY: the ABI declares the symbol with this type.
    let version: AbiVersionFn = *unsafe { library.get::<AbiVersionFn>(ABI_VERSION_SYMBOL) }
        .map_err(|_| missing("rafi_function_abi_version"))?;
    // SAFETY: a function of the ABI's type, from a library that stays loaded meanwhile.
    let found = unsafe { version() };
    if found != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            library: label.to_owned(),
            found,
            expected: ABI_VERSION,
        });
    }
    // SAFETY: the ABI declares the symbol with this type.
    let table: TableFn = *unsafe { library.get::<TableFn>(TABLE_SYMBOL) }
        .map_err(|_| missing("rafi_function_table"))?;
    let mut count = 0usize;
    // SAFETY: a function of the ABI's type; `count` is valid for a write.
    let ptr = unsafe { table(&mut count) };
    if count == 0 {
        return Err(LoadError::NoFunctions {
            library: label.to_owned(),
        });
    }
    if count > MAX_FUNCTIONS {
        return Err(LoadError::TooManyFunctions {
            library: label.to_owned(),
            count,
            max: MAX_FUNCTIONS,
        });
    }
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(LoadError::BadTable {
            library: label.to_owned(),
        });
    }
    // SAFETY: the ABI promises `count` entries at `ptr`, static while the library is
    // loaded (non-null and aligned, checked above); we copy what we need out of them.
    let entries = unsafe { slice::from_raw_parts(ptr, count) };
    let mut seen = HashSet::with_capacity(count);
    let mut functions = Vec::with_capacity(count);
    for (index, entry) in entries.iter().enumerate() {
        if entry.name.is_null() {
            return Err(LoadError::NullName {
                library: label.to_owned(),
                index,
            });
        }
        // SAFETY: a non-null, NUL-terminated string (ABI); strnlen reads no further than
        // its NUL or MAX_NAME_LEN + 1 bytes, whichever comes first.
        let len = unsafe { libc::strnlen(entry.name, MAX_NAME_LEN + 1) };
        // SAFETY: the `len` bytes strnlen just read.
        let bytes = unsafe { slice::from_raw_parts(entry.name.cast::<u8>(), len) };
        let name = check_name(bytes).map_err(|reason| LoadError::BadName {
            library: label.to_owned(),
            index,
            reason,
        })?;
        let Some(call) = entry.call else {
            return Err(LoadError::NullFunction {
                library: label.to_owned(),
                index,
                name: name.to_owned(),
            });
        };
        if !seen.insert(name) {
            return Err(LoadError::DuplicateName {
                library: label.to_owned(),
                name: name.to_owned(),
            });
        }
        functions.push((name.to_owned(), call));
    }
    Ok(functions)
}
