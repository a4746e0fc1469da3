//! A small safe Rust wrapper over libtasker's C ABI, with no third-party
//! crates.  The rules it follows are in docs/languages.md:
//!
//! * Every handle has one owner and is freed once: [`Coordinator`] closes in
//!   `Drop`, [`Template`] frees in `Drop`, strings from the library are copied
//!   and released with `tasker_free`.
//! * The last error is per OS thread; a std thread never migrates, so each
//!   failing call reads `tasker_error_last()` right after, on the same thread.
//! * Handlers are `Fn(Step) + Send + Sync` closures called on tasker's worker
//!   threads through an `extern "C"` trampoline; the boxed closure is the
//!   userdata and the coordinator drops it through `free_userdata`.
//! * A [`Step`] is completed exactly once: `succeed` and `fail` take it by
//!   value.  Moving it to another thread is deferred completion.  A step
//!   dropped without being completed fails its attempt, so no step is lost.

pub mod demo;
pub mod ffi;
pub mod json;

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::time::Duration;

/// The ABI number this crate was written against; checked by [`Coordinator::open`].
pub const BINDING_ABI: i32 = ffi::TASKER_ABI_VERSION;

/// Status codes from tasker.h that callers commonly match on.
pub mod code {
    pub const EINVAL: i32 = -1;
    pub const ENOTFOUND: i32 = -3;
    pub const EEXIST: i32 = -4;
    pub const ESTATE: i32 = -5;
    pub const ETEMPLATE: i32 = -6;
    pub const ETIMEOUT: i32 = -7;
    pub const ECLOSED: i32 = -8;
    pub const EVERSION: i32 = -10;
    pub const ECONFIG: i32 = -12;
}

/// A failed tasker call: its code and a copy of the thread's structured last error.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: i32,
    pub name: String,
    pub category: String,
    pub message: String,
    pub context: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)?;
        if !self.context.is_empty() && self.context != "{}" {
            write!(f, " {}", self.context)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

unsafe fn string_from(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Turns a status into a Result.  Must run on the thread that made the call,
/// before any other tasker call there.
fn check(rc: c_int) -> Result<()> {
    if rc == ffi::TASKER_OK {
        return Ok(());
    }
    unsafe {
        let name = string_from(ffi::tasker_strerror(rc));
        let e = ffi::tasker_error_last();
        // Only trust the last error if it describes this failure.
        if !e.is_null() && (*e).code == rc {
            Err(Error {
                code: rc,
                name,
                category: string_from(ffi::tasker_error_category_name((*e).category)),
                message: string_from((*e).message),
                context: string_from((*e).context_json),
            })
        } else {
            Err(Error {
                code: rc,
                message: name.clone(),
                name,
                category: String::new(),
                context: "{}".into(),
            })
        }
    }
}

/// An argument error raised by the wrapper itself (a string with a NUL byte).
fn invalid(what: &str) -> Error {
    Error {
        code: code::EINVAL,
        name: "TASKER_EINVAL".into(),
        category: "argument".into(),
        message: format!("{what} contains a NUL byte"),
        context: "{}".into(),
    }
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| invalid(what))
}

/// Copies a string the library allocated and releases it with tasker_free.
unsafe fn take_library_string(p: *mut c_char) -> String {
    let s = string_from(p);
    ffi::tasker_free(p as *mut c_void);
    s
}

fn millis(d: Option<Duration>) -> c_int {
    match d {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as c_int,
    }
}

/// The loaded library's version string.
pub fn version() -> String {
    unsafe { string_from(ffi::tasker_version()) }
}

/// The loaded library's ABI number.
pub fn abi_version() -> i32 {
    unsafe { ffi::tasker_abi_version() }
}

/// Asks the library whether a binding built against `binding_abi` may use it.
pub fn abi_check(binding_abi: i32) -> Result<()> {
    check(unsafe { ffi::tasker_abi_check(binding_abi) })
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Complete,
    Error,
    Cancelled,
    ResolvedManually,
    Unknown(i32),
}

impl TaskState {
    fn from_raw(v: c_int) -> Self {
        match v {
            0 => TaskState::Pending,
            1 => TaskState::Running,
            2 => TaskState::Complete,
            3 => TaskState::Error,
            4 => TaskState::Cancelled,
            5 => TaskState::ResolvedManually,
            other => TaskState::Unknown(other),
        }
    }

    /// The name tasker uses in JSON ("complete", ...).
    pub fn name(self) -> String {
        let raw = match self {
            TaskState::Pending => 0,
            TaskState::Running => 1,
            TaskState::Complete => 2,
            TaskState::Error => 3,
            TaskState::Cancelled => 4,
            TaskState::ResolvedManually => 5,
            TaskState::Unknown(v) => v,
        };
        let s = unsafe { string_from(ffi::tasker_task_state_name(raw)) };
        if s.is_empty() {
            "unknown".into()
        } else {
            s
        }
    }
}

/// Backoff policy between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    None = 0,
    Linear = 1,
    Exponential = 2,
}

/// Per-step options; `Default` gives the library's defaults.
#[derive(Debug, Clone)]
pub struct StepOptions {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base_ms: u32,
    pub max_ms: u32,
    pub jitter: f64,
    pub timeout_ms: u32,
}

impl Default for StepOptions {
    fn default() -> Self {
        let mut o = ffi::tasker_step_options {
            version: 0,
            max_attempts: 0,
            backoff: 0,
            base_ms: 0,
            max_ms: 0,
            jitter: 0.0,
            timeout_ms: 0,
        };
        // Let the library fill its own defaults rather than copying them here.
        unsafe { ffi::tasker_step_options_init(&mut o, ffi::TASKER_STEP_OPTIONS_VERSION) };
        StepOptions {
            max_attempts: o.max_attempts,
            backoff: match o.backoff {
                0 => Backoff::None,
                1 => Backoff::Linear,
                _ => Backoff::Exponential,
            },
            base_ms: o.base_ms,
            max_ms: o.max_ms,
            jitter: o.jitter,
            timeout_ms: o.timeout_ms,
        }
    }
}

/// A template under construction.  Freed on drop; registering copies it.
pub struct Template {
    raw: NonNull<ffi::tasker_template>,
}

impl Template {
    pub fn new(namespace: &str, name: &str, version: &str) -> Result<Template> {
        let (ns, n, v) = (
            cstring(namespace, "namespace")?,
            cstring(name, "name")?,
            cstring(version, "version")?,
        );
        let mut raw = ptr::null_mut();
        check(unsafe { ffi::tasker_template_new(&mut raw, ns.as_ptr(), n.as_ptr(), v.as_ptr()) })?;
        Ok(Template {
            raw: NonNull::new(raw).expect("tasker_template_new returned OK and NULL"),
        })
    }

    /// Adds a step; `handler` None means the step's own name.
    pub fn add_step(
        &mut self,
        name: &str,
        handler: Option<&str>,
        depends_on: &[&str],
        opts: Option<&StepOptions>,
    ) -> Result<()> {
        let cname = cstring(name, "step name")?;
        let chandler = handler.map(|h| cstring(h, "handler name")).transpose()?;
        let cdeps = depends_on
            .iter()
            .map(|d| cstring(d, "dependency name"))
            .collect::<Result<Vec<_>>>()?;
        let dep_ptrs: Vec<*const c_char> = cdeps.iter().map(|d| d.as_ptr()).collect();
        let copts = opts.map(|o| ffi::tasker_step_options {
            version: ffi::TASKER_STEP_OPTIONS_VERSION,
            max_attempts: o.max_attempts,
            backoff: o.backoff as c_int,
            base_ms: o.base_ms,
            max_ms: o.max_ms,
            jitter: o.jitter,
            timeout_ms: o.timeout_ms,
        });
        check(unsafe {
            ffi::tasker_template_add_step(
                self.raw.as_ptr(),
                cname.as_ptr(),
                chandler.as_ref().map_or(ptr::null(), |h| h.as_ptr()),
                if dep_ptrs.is_empty() {
                    ptr::null()
                } else {
                    dep_ptrs.as_ptr()
                },
                dep_ptrs.len(),
                copts.as_ref().map_or(ptr::null(), |o| o as *const _),
            )
        })
    }

    pub fn to_json(&self) -> Result<String> {
        let mut out = ptr::null_mut();
        check(unsafe { ffi::tasker_template_to_json(&mut out, self.raw.as_ptr()) })?;
        Ok(unsafe { take_library_string(out) })
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        unsafe { ffi::tasker_template_free(self.raw.as_ptr()) }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: String,
    pub message: String,
    pub retryable: bool,
    /// Overrides the step's backoff when set.
    pub retry_after: Option<Duration>,
    /// A JSON object with details.
    pub context_json: Option<String>,
}

impl Failure {
    pub fn retryable(class: &str, message: &str) -> Failure {
        Failure {
            class: class.into(),
            message: message.into(),
            retryable: true,
            retry_after: None,
            context_json: None,
        }
    }

    pub fn permanent(class: &str, message: &str) -> Failure {
        Failure {
            retryable: false,
            ..Failure::retryable(class, message)
        }
    }
}

/// One attempt of one step.  `Send`, so a handler may move it to another
/// thread and complete it there (deferred completion).
pub struct Step {
    raw: *mut ffi::tasker_step,
    completed: bool,
}

// The step accessors and completions are documented as callable from any thread.
unsafe impl Send for Step {}
unsafe impl Sync for Step {}

impl Step {
    fn borrowed_str(&self, p: *const c_char) -> &str {
        if p.is_null() {
            ""
        } else {
            // Valid as long as the handle: tied to &self.
            unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
        }
    }

    pub fn name(&self) -> &str {
        self.borrowed_str(unsafe { ffi::tasker_step_name(self.raw) })
    }
    pub fn handler_name(&self) -> &str {
        self.borrowed_str(unsafe { ffi::tasker_step_handler_name(self.raw) })
    }
    pub fn uuid(&self) -> &str {
        self.borrowed_str(unsafe { ffi::tasker_step_uuid(self.raw) })
    }
    pub fn task_uuid(&self) -> &str {
        self.borrowed_str(unsafe { ffi::tasker_step_task_uuid(self.raw) })
    }
    /// 1 for the first attempt.
    pub fn attempt(&self) -> u32 {
        unsafe { ffi::tasker_step_attempt(self.raw) }
    }
    pub fn max_attempts(&self) -> u32 {
        unsafe { ffi::tasker_step_max_attempts(self.raw) }
    }

    /// The task's context JSON.
    pub fn context(&self) -> &str {
        let mut len = 0usize;
        let p = unsafe { ffi::tasker_step_context(self.raw, &mut len) };
        if p.is_null() {
            return "";
        }
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// The JSON result of dependency `dep`.
    pub fn dependency_result(&self, dep: &str) -> Result<&str> {
        let cdep = cstring(dep, "dependency name")?;
        let (mut p, mut len) = (ptr::null(), 0usize);
        check(unsafe {
            ffi::tasker_step_dependency_result(&mut p, &mut len, self.raw, cdep.as_ptr())
        })?;
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        Ok(std::str::from_utf8(bytes).unwrap_or("null"))
    }

    /// Completes the attempt with a JSON result ("" or "null": none).  If the
    /// library rejects the JSON (EINVAL) the step is still in progress; the
    /// dropped `Step` then fails the attempt.
    pub fn succeed(mut self, result_json: &str) -> Result<()> {
        let (p, len) = if result_json.is_empty() {
            (ptr::null(), 0)
        } else {
            (result_json.as_ptr() as *const c_char, result_json.len())
        };
        let rc = unsafe { ffi::tasker_step_succeed(self.raw, p, len) };
        let result = check(rc);
        self.completed = rc != ffi::TASKER_EINVAL;
        result
    }

    /// Completes the attempt as failed.
    pub fn fail(mut self, failure: &Failure) -> Result<()> {
        let result = self.fail_raw(failure);
        self.completed = true;
        result
    }

    fn fail_raw(&self, failure: &Failure) -> Result<()> {
        let class = cstring(&failure.class, "error class")?;
        let message = cstring(&failure.message, "message")?;
        let context = failure
            .context_json
            .as_deref()
            .map(|c| cstring(c, "context"))
            .transpose()?;
        let mut f = ffi::tasker_failure {
            version: 0,
            error_class: ptr::null(),
            message: ptr::null(),
            retryable: 1,
            retry_after_ms: -1,
            context_json: ptr::null(),
        };
        unsafe { ffi::tasker_failure_init(&mut f, ffi::TASKER_FAILURE_VERSION) };
        f.error_class = class.as_ptr();
        f.message = message.as_ptr();
        f.retryable = failure.retryable as c_int;
        f.retry_after_ms = failure
            .retry_after
            .map_or(-1, |d| d.as_millis().min(i64::MAX as u128) as i64);
        f.context_json = context.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        check(unsafe { ffi::tasker_step_fail(self.raw, &f) })
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        // A step nobody completed would stay in progress forever: fail it.
        // During a panic the handler is broken, so do not retry it.
        let failure = if std::thread::panicking() {
            Failure::permanent("RustPanic", "the handler panicked")
        } else {
            Failure::retryable(
                "tasker.StepDropped",
                "the Step was dropped without succeed() or fail()",
            )
        };
        let _ = self.fail_raw(&failure);
    }
}

type BoxedHandler = Box<dyn Fn(Step) + Send + Sync + 'static>;

extern "C" fn handler_trampoline(step: *mut ffi::tasker_step, userdata: *mut c_void) -> c_int {
    // userdata is the Box<BoxedHandler> made in Coordinator::handle; it lives
    // until the coordinator calls release_handler.
    let handler = unsafe { &*(userdata as *const BoxedHandler) };
    let step = Step {
        raw: step,
        completed: false,
    };
    // A panic must not unwind into C; the Step's Drop has failed the attempt.
    let _ = catch_unwind(AssertUnwindSafe(|| handler(step)));
    ffi::TASKER_OK
}

extern "C" fn release_handler(userdata: *mut c_void) {
    drop(unsafe { Box::from_raw(userdata as *mut BoxedHandler) });
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub context_json: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub priority: i32,
}

/// A tasker coordinator.  Thread-safe; closed on drop.
pub struct Coordinator {
    raw: NonNull<ffi::tasker_coordinator>,
}

// tasker documents every coordinator call used here as thread-safe.
unsafe impl Send for Coordinator {}
unsafe impl Sync for Coordinator {}

struct ConfigGuard(*mut ffi::tasker_config);
impl Drop for ConfigGuard {
    fn drop(&mut self) {
        unsafe { ffi::tasker_config_free(self.0) }
    }
}

impl Coordinator {
    /// Checks the ABI and opens a coordinator with `config` key/value pairs
    /// (empty: memory store with defaults).
    pub fn open(config: &[(&str, &str)]) -> Result<Coordinator> {
        abi_check(BINDING_ABI)?;
        let mut cfg = ptr::null_mut();
        check(unsafe { ffi::tasker_config_new(&mut cfg) })?;
        let cfg = ConfigGuard(cfg);
        for (key, value) in config {
            let (k, v) = (cstring(key, "config key")?, cstring(value, "config value")?);
            check(unsafe { ffi::tasker_config_set(cfg.0, k.as_ptr(), v.as_ptr()) })?;
        }
        let mut raw = ptr::null_mut();
        check(unsafe { ffi::tasker_coordinator_open(&mut raw, cfg.0) })?;
        Ok(Coordinator {
            raw: NonNull::new(raw).expect("tasker_coordinator_open returned OK and NULL"),
        })
    }

    fn raw(&self) -> *mut ffi::tasker_coordinator {
        self.raw.as_ptr()
    }

    /// Registers `handler` under `name`.  It runs on tasker's worker threads.
    pub fn handle<F>(&self, name: &str, handler: F) -> Result<()>
    where
        F: Fn(Step) + Send + Sync + 'static,
    {
        let cname = cstring(name, "handler name")?;
        let boxed: Box<BoxedHandler> = Box::new(Box::new(handler));
        // Ownership passes to the coordinator, which frees it through
        // release_handler, also when registration fails.
        let userdata = Box::into_raw(boxed) as *mut c_void;
        check(unsafe {
            ffi::tasker_handler_register(
                self.raw(),
                cname.as_ptr(),
                Some(handler_trampoline),
                userdata,
                Some(release_handler),
            )
        })
    }

    pub fn register_template(&self, template: &Template) -> Result<()> {
        check(unsafe { ffi::tasker_template_register(self.raw(), template.raw.as_ptr()) })
    }

    pub fn register_template_json(&self, json: &str) -> Result<()> {
        let cjson = cstring(json, "template JSON")?;
        check(unsafe { ffi::tasker_template_register_json(self.raw(), cjson.as_ptr(), json.len()) })
    }

    pub fn start(&self, threads: u32) -> Result<()> {
        check(unsafe { ffi::tasker_coordinator_start(self.raw(), threads) })
    }

    /// Stops the workers; waits up to `drain` (None: forever) for deferred steps.
    pub fn stop(&self, drain: Option<Duration>) -> Result<()> {
        check(unsafe { ffi::tasker_coordinator_stop(self.raw(), millis(drain)) })
    }

    /// Creates a task and returns its UUID.
    pub fn create_task(&self, req: &TaskRequest<'_>) -> Result<String> {
        let ns = cstring(req.namespace, "namespace")?;
        let name = cstring(req.name, "name")?;
        let version = req.version.map(|v| cstring(v, "version")).transpose()?;
        let context = req
            .context_json
            .map(|c| cstring(c, "context"))
            .transpose()?;
        let key = req
            .idempotency_key
            .map(|k| cstring(k, "idempotency key"))
            .transpose()?;
        let mut r = ffi::tasker_task_request {
            version: 0,
            ns: ptr::null(),
            name: ptr::null(),
            template_version: ptr::null(),
            context_json: ptr::null(),
            context_len: 0,
            idempotency_key: ptr::null(),
            priority: 0,
        };
        check(unsafe { ffi::tasker_task_request_init(&mut r, ffi::TASKER_TASK_REQUEST_VERSION) })?;
        r.ns = ns.as_ptr();
        r.name = name.as_ptr();
        r.template_version = version.as_ref().map_or(ptr::null(), |v| v.as_ptr());
        r.context_json = context.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        r.context_len = req.context_json.map_or(0, str::len);
        r.idempotency_key = key.as_ref().map_or(ptr::null(), |k| k.as_ptr());
        r.priority = req.priority;
        let mut uuid = [0 as c_char; ffi::TASKER_UUID_BUFSIZE];
        check(unsafe { ffi::tasker_task_create(uuid.as_mut_ptr(), self.raw(), &r) })?;
        Ok(unsafe { string_from(uuid.as_ptr()) })
    }

    /// Waits up to `timeout` (None: forever) for a final state.  Returns the
    /// state, or an ETIMEOUT error if it is not final by then.
    pub fn wait(&self, task_uuid: &str, timeout: Option<Duration>) -> Result<TaskState> {
        let cu = cstring(task_uuid, "task uuid")?;
        let mut state: c_int = 0;
        check(unsafe {
            ffi::tasker_task_wait(&mut state, self.raw(), cu.as_ptr(), millis(timeout))
        })?;
        Ok(TaskState::from_raw(state))
    }

    /// The task as JSON (states, results, errors, attempts, transitions).
    pub fn task_json(&self, task_uuid: &str) -> Result<String> {
        let cu = cstring(task_uuid, "task uuid")?;
        let mut out = ptr::null_mut();
        check(unsafe { ffi::tasker_task_get(&mut out, self.raw(), cu.as_ptr()) })?;
        Ok(unsafe { take_library_string(out) })
    }

    /// Closes now and reports the result (drop closes too, ignoring it).
    pub fn close(self) -> Result<()> {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        check(unsafe { ffi::tasker_coordinator_close(raw) })
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        unsafe { ffi::tasker_coordinator_close(self.raw.as_ptr()) };
    }
}
