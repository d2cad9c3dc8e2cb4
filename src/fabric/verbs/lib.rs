//! libibverbs, loaded at run time: a table of the exported functions rafi calls, resolved
//! once with `dlopen`/`dlsym`. rafi never links libibverbs, so a binary built with the
//! `verbs` feature starts (and runs shm and tcp) on a machine that lacks it; only opening a
//! verbs device needs the library.
//!
//! The data-path calls (`ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq`,
//! `ibv_req_notify_cq`) are not here: verbs.h makes them inline calls through the
//! provider's `context->ops`, and so does rafi (see `qp.rs` and `cq.rs`).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

use rdma_sys::{
    ibv_comp_channel, ibv_context, ibv_cq, ibv_device, ibv_device_attr, ibv_gid, ibv_mr, ibv_pd,
    ibv_port_attr, ibv_qp, ibv_qp_attr, ibv_qp_init_attr,
};

/// The library's name as the dynamic loader finds it (the runtime package, not -dev).
pub(super) const DEFAULT_PATH: &str = "libibverbs.so.1";
/// Environment variable that overrides [`DEFAULT_PATH`] (a path or a soname).
pub(super) const PATH_VAR: &str = "RAFI_LIBIBVERBS";

macro_rules! functions {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The exported libibverbs functions rafi uses, with the C signatures of verbs.h.
        pub(super) struct Lib {
            $(pub(super) $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            /// Keeps the library mapped for as long as the process lives (never unloaded).
            _library: libloading::Library,
            /// Where it was loaded from (for messages).
            pub(super) path: String,
        }

        impl Lib {
            fn load(path: &str) -> Result<Lib, String> {
                // SAFETY: loading libibverbs runs its initialisers, which only set up its
                // own state (the provider list is read later, by ibv_get_device_list).
                let library = unsafe { libloading::Library::new(path) }
                    .map_err(|e| format!("cannot load {path}: {e}"))?;
                Ok(Lib {
                    $($name: {
                        let symbol = concat!(stringify!($name), "\0").as_bytes();
                        // SAFETY: the symbol is the libibverbs function of that name, whose C
                        // signature (verbs.h) is the one declared above; dlsym returns the
                        // default (newest) symbol version, the one verbs.h binds to.
                        let f = unsafe {
                            library.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(symbol)
                        }
                        .map_err(|e| format!("{path} lacks {}: {e}", stringify!($name)))?;
                        *f
                    },)*
                    _library: library,
                    path: path.to_owned(),
                })
            }
        }
    };
}

functions! {
    ibv_get_device_list: fn(*mut c_int) -> *mut *mut ibv_device;
    ibv_free_device_list: fn(*mut *mut ibv_device);
    ibv_get_device_name: fn(*mut ibv_device) -> *const c_char;
    ibv_open_device: fn(*mut ibv_device) -> *mut ibv_context;
    ibv_close_device: fn(*mut ibv_context) -> c_int;
    ibv_query_device: fn(*mut ibv_context, *mut ibv_device_attr) -> c_int;
    // The exported compat symbol: fills the fields up to `link_layer`'s predecessors only;
    // `device.rs` prefers the provider's extended query_port when the context has one.
    ibv_query_port: fn(*mut ibv_context, u8, *mut ibv_port_attr) -> c_int;
    ibv_query_gid: fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int;
    ibv_alloc_pd: fn(*mut ibv_context) -> *mut ibv_pd;
    ibv_dealloc_pd: fn(*mut ibv_pd) -> c_int;
    ibv_reg_mr: fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr;
    ibv_dereg_mr: fn(*mut ibv_mr) -> c_int;
    ibv_create_comp_channel: fn(*mut ibv_context) -> *mut ibv_comp_channel;
    ibv_destroy_comp_channel: fn(*mut ibv_comp_channel) -> c_int;
    ibv_create_cq: fn(*mut ibv_context, c_int, *mut c_void, *mut ibv_comp_channel, c_int) -> *mut ibv_cq;
    ibv_destroy_cq: fn(*mut ibv_cq) -> c_int;
    ibv_get_cq_event: fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int;
    ibv_ack_cq_events: fn(*mut ibv_cq, c_uint);
    ibv_create_qp: fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp;
    ibv_modify_qp: fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int;
    ibv_query_qp: fn(*mut ibv_qp, *mut ibv_qp_attr, c_int, *mut ibv_qp_init_attr) -> c_int;
    ibv_destroy_qp: fn(*mut ibv_qp) -> c_int;
}

/// The library, loaded on first use from `$RAFI_LIBIBVERBS` or [`DEFAULT_PATH`]; the
/// outcome (either way) is kept for the life of the process.
///
/// # Errors
/// Why it could not be loaded, for [`super::FabricError::Unavailable`]'s reason.
pub(super) fn get() -> Result<&'static Lib, &'static str> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = std::env::var(PATH_VAR)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.to_owned());
        Lib::load(&path)
    })
    .as_ref()
    .map_err(String::as_str)
}
