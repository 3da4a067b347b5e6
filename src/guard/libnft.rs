//! nft's library, `libnftables`, loaded at run time and used in-process.
//!
//! Why: each `nft` process that deletes anything waits, when it closes its netlink socket, for
//! the kernel to finish releasing what the transaction removed (nf_tables flushes its destroy
//! work, an RCU grace period, on the socket's release). That is 5–15 ms per batch on top of
//! starting a process and loading nft's cache, whatever the size of the ruleset. A context that
//! lives as long as the guard keeps one netlink socket open, so a batch costs what nft's own work
//! costs. The text given is exactly what `nft -f -` would read; one call is one transaction.
//!
//! The library is opened with `dlopen("libnftables.so.1")`, the soname every distribution's `nft`
//! links against, so nothing is needed at build time. When it cannot be loaded the guard runs the
//! `nft` program instead (see `apply::Applier`).
//!
//! The context's netlink socket belongs to the network namespace of the thread that created the
//! context; the guard creates it on its own thread at start.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;

/// The soname of nft's library (stable since nftables 0.9).
const SONAME: &CStr = c"libnftables.so.1";

type CtxNew = unsafe extern "C" fn(flags: u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(ctx: *mut c_void);
type BufferErrors = unsafe extern "C" fn(ctx: *mut c_void) -> c_int;
type GetErrors = unsafe extern "C" fn(ctx: *mut c_void) -> *const c_char;
type RunBuffer = unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_char) -> c_int;

/// An open libnftables context.
pub struct LibNft {
    handle: NonNull<c_void>,
    ctx: NonNull<c_void>,
    free: CtxFree,
    errors: GetErrors,
    run: RunBuffer,
}

// SAFETY: the context is only used through `&mut self` (one thread at a time), and libnftables
// keeps no thread-local state: moving it to another thread between calls is fine.
unsafe impl Send for LibNft {}

/// The last `dlerror()` text.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by libc, copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

impl LibNft {
    /// Load the library and create a context (with errors buffered, not printed).
    pub fn open() -> Result<LibNft, String> {
        // SAFETY: dlopen with a valid C string; the result is checked.
        let handle = unsafe { libc::dlopen(SONAME.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        let Some(handle) = NonNull::new(handle) else {
            return Err(format!(
                "cannot load {}: {}",
                SONAME.to_string_lossy(),
                dl_error()
            ));
        };
        let symbol = |name: &CStr| -> Result<*mut c_void, String> {
            // SAFETY: `handle` is a live dlopen handle and `name` a valid C string.
            let ptr = unsafe { libc::dlsym(handle.as_ptr(), name.as_ptr()) };
            if ptr.is_null() {
                Err(format!(
                    "{} has no {}",
                    SONAME.to_string_lossy(),
                    name.to_string_lossy()
                ))
            } else {
                Ok(ptr)
            }
        };
        let resolved = (|| {
            Ok::<_, String>((
                symbol(c"nft_ctx_new")?,
                symbol(c"nft_ctx_free")?,
                symbol(c"nft_ctx_buffer_error")?,
                symbol(c"nft_ctx_get_error_buffer")?,
                symbol(c"nft_run_cmd_from_buffer")?,
            ))
        })();
        let (new, free, buffer, errors, run) = match resolved {
            Ok(symbols) => symbols,
            Err(err) => {
                // SAFETY: the handle came from dlopen and nothing from it is in use.
                unsafe { libc::dlclose(handle.as_ptr()) };
                return Err(err);
            }
        };
        // SAFETY: the symbols have these C signatures in every libnftables.so.1 (libnftables.h).
        let (new, free, buffer, errors, run): (
            CtxNew,
            CtxFree,
            BufferErrors,
            GetErrors,
            RunBuffer,
        ) = unsafe {
            (
                std::mem::transmute::<*mut c_void, CtxNew>(new),
                std::mem::transmute::<*mut c_void, CtxFree>(free),
                std::mem::transmute::<*mut c_void, BufferErrors>(buffer),
                std::mem::transmute::<*mut c_void, GetErrors>(errors),
                std::mem::transmute::<*mut c_void, RunBuffer>(run),
            )
        };
        // SAFETY: NFT_CTX_DEFAULT (0) is a valid flag set; the result is checked.
        let ctx = unsafe { new(0) };
        let Some(ctx) = NonNull::new(ctx) else {
            // SAFETY: as above.
            unsafe { libc::dlclose(handle.as_ptr()) };
            return Err("nft_ctx_new failed".into());
        };
        // SAFETY: `ctx` is a live context.
        if unsafe { buffer(ctx.as_ptr()) } != 0 {
            // SAFETY: `ctx` is live and freed once; then the handle is closed.
            unsafe {
                free(ctx.as_ptr());
                libc::dlclose(handle.as_ptr());
            }
            return Err("nft_ctx_buffer_error failed".into());
        }
        Ok(LibNft {
            handle,
            ctx,
            free,
            errors,
            run,
        })
    }

    /// Run `text` (nft syntax, one transaction). On failure, nft's error messages.
    pub fn run(&mut self, text: &str) -> Result<(), String> {
        let text = CString::new(text).map_err(|_| "the batch contains a NUL byte".to_string())?;
        // SAFETY: `ctx` is live, `text` a valid C string that outlives the call.
        let rc = unsafe { (self.run)(self.ctx.as_ptr(), text.as_ptr()) };
        // Always drain the error buffer, so that warnings do not pile up across calls.
        // SAFETY: `ctx` is live; the returned string is owned by the context and copied at once.
        let errors = unsafe {
            let ptr = (self.errors)(self.ctx.as_ptr());
            if ptr.is_null() {
                String::new()
            } else {
                CStr::from_ptr(ptr).to_string_lossy().trim().to_string()
            }
        };
        if rc == 0 {
            Ok(())
        } else if errors.is_empty() {
            Err(format!("libnftables returned {rc}"))
        } else {
            Err(errors)
        }
    }
}

impl Drop for LibNft {
    fn drop(&mut self) {
        // SAFETY: the context and the handle are live and released exactly once, in this order.
        unsafe {
            (self.free)(self.ctx.as_ptr());
            libc::dlclose(self.handle.as_ptr());
        }
    }
}

impl std::fmt::Debug for LibNft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LibNft(libnftables.so.1)")
    }
}
