//! Hand-written declarations of the part of tasker.h this crate uses.
//! Layouts follow the header: C enums are `int`-sized, versioned structs
//! start with their `version` field and are filled by the `_init` calls.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_uint, c_void};

/// The ABI number of the tasker.h these declarations were written from.
pub const TASKER_ABI_VERSION: c_int = 1;

pub const TASKER_OK: c_int = 0;
pub const TASKER_EINVAL: c_int = -1;
pub const TASKER_EVERSION: c_int = -10;

pub const TASKER_STEP_OPTIONS_VERSION: c_uint = 1;
pub const TASKER_TASK_REQUEST_VERSION: c_uint = 1;
pub const TASKER_FAILURE_VERSION: c_uint = 1;
pub const TASKER_UUID_BUFSIZE: usize = 37;

// Opaque handles: never constructed or moved by Rust, only pointed to.
#[repr(C)]
pub struct tasker_config {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct tasker_coordinator {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct tasker_template {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct tasker_step {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct tasker_error {
    pub version: c_uint,
    pub code: c_int,
    pub category: c_int,
    pub message: *const c_char,
    pub context_json: *const c_char,
}

#[repr(C)]
pub struct tasker_step_options {
    pub version: c_uint,
    pub max_attempts: u32,
    pub backoff: c_int,
    pub base_ms: u32,
    pub max_ms: u32,
    pub jitter: f64,
    pub timeout_ms: u32,
}

#[repr(C)]
pub struct tasker_task_request {
    pub version: c_uint,
    pub ns: *const c_char,
    pub name: *const c_char,
    pub template_version: *const c_char,
    pub context_json: *const c_char,
    pub context_len: usize,
    pub idempotency_key: *const c_char,
    pub priority: i32,
}

#[repr(C)]
pub struct tasker_failure {
    pub version: c_uint,
    pub error_class: *const c_char,
    pub message: *const c_char,
    pub retryable: c_int,
    pub retry_after_ms: i64,
    pub context_json: *const c_char,
}

pub type tasker_handler_fn = extern "C" fn(step: *mut tasker_step, userdata: *mut c_void) -> c_int;
pub type tasker_free_fn = extern "C" fn(userdata: *mut c_void);

#[link(name = "tasker")]
extern "C" {
    pub fn tasker_version() -> *const c_char;
    pub fn tasker_abi_version() -> c_int;
    pub fn tasker_abi_check(binding_abi: c_int) -> c_int;
    pub fn tasker_strerror(code: c_int) -> *const c_char;
    pub fn tasker_error_category_name(category: c_int) -> *const c_char;
    pub fn tasker_error_last() -> *const tasker_error;
    pub fn tasker_free(ptr: *mut c_void);
    pub fn tasker_task_state_name(state: c_int) -> *const c_char;

    pub fn tasker_config_new(out: *mut *mut tasker_config) -> c_int;
    pub fn tasker_config_free(cfg: *mut tasker_config);
    pub fn tasker_config_set(
        cfg: *mut tasker_config,
        key: *const c_char,
        value: *const c_char,
    ) -> c_int;

    pub fn tasker_coordinator_open(
        out: *mut *mut tasker_coordinator,
        cfg: *const tasker_config,
    ) -> c_int;
    pub fn tasker_coordinator_close(coord: *mut tasker_coordinator) -> c_int;
    pub fn tasker_coordinator_start(coord: *mut tasker_coordinator, n_threads: c_uint) -> c_int;
    pub fn tasker_coordinator_stop(coord: *mut tasker_coordinator, drain_ms: c_int) -> c_int;

    pub fn tasker_handler_register(
        coord: *mut tasker_coordinator,
        name: *const c_char,
        func: Option<tasker_handler_fn>,
        userdata: *mut c_void,
        free_userdata: Option<tasker_free_fn>,
    ) -> c_int;

    pub fn tasker_step_options_init(opts: *mut tasker_step_options, version: c_uint) -> c_int;
    pub fn tasker_template_new(
        out: *mut *mut tasker_template,
        ns: *const c_char,
        name: *const c_char,
        version: *const c_char,
    ) -> c_int;
    pub fn tasker_template_free(tmpl: *mut tasker_template);
    pub fn tasker_template_add_step(
        tmpl: *mut tasker_template,
        name: *const c_char,
        handler: *const c_char,
        depends_on: *const *const c_char,
        n_deps: usize,
        opts: *const tasker_step_options,
    ) -> c_int;
    pub fn tasker_template_to_json(
        json_out: *mut *mut c_char,
        tmpl: *const tasker_template,
    ) -> c_int;
    pub fn tasker_template_register(
        coord: *mut tasker_coordinator,
        tmpl: *const tasker_template,
    ) -> c_int;
    pub fn tasker_template_register_json(
        coord: *mut tasker_coordinator,
        json: *const c_char,
        len: usize,
    ) -> c_int;

    pub fn tasker_task_request_init(req: *mut tasker_task_request, version: c_uint) -> c_int;
    pub fn tasker_task_create(
        uuid_out: *mut c_char,
        coord: *mut tasker_coordinator,
        req: *const tasker_task_request,
    ) -> c_int;
    pub fn tasker_task_wait(
        state_out: *mut c_int,
        coord: *mut tasker_coordinator,
        task_uuid: *const c_char,
        timeout_ms: c_int,
    ) -> c_int;
    pub fn tasker_task_get(
        json_out: *mut *mut c_char,
        coord: *mut tasker_coordinator,
        task_uuid: *const c_char,
    ) -> c_int;

    pub fn tasker_step_name(step: *const tasker_step) -> *const c_char;
    pub fn tasker_step_handler_name(step: *const tasker_step) -> *const c_char;
    pub fn tasker_step_uuid(step: *const tasker_step) -> *const c_char;
    pub fn tasker_step_task_uuid(step: *const tasker_step) -> *const c_char;
    pub fn tasker_step_attempt(step: *const tasker_step) -> u32;
    pub fn tasker_step_max_attempts(step: *const tasker_step) -> u32;
    pub fn tasker_step_context(step: *const tasker_step, len_out: *mut usize) -> *const c_char;
    pub fn tasker_step_dependency_result(
        json_out: *mut *const c_char,
        len_out: *mut usize,
        step: *const tasker_step,
        dep_name: *const c_char,
    ) -> c_int;
    pub fn tasker_step_succeed(
        step: *mut tasker_step,
        result_json: *const c_char,
        len: usize,
    ) -> c_int;
    pub fn tasker_failure_init(failure: *mut tasker_failure, version: c_uint) -> c_int;
    pub fn tasker_step_fail(step: *mut tasker_step, failure: *const tasker_failure) -> c_int;
}
