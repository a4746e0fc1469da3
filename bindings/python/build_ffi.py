"""CFFI build script for tasker's extension module ``tasker._native``.

API (out-of-line) mode: the C compiler builds one extension that contains the
whole tasker library (every ``capi/**/*.c`` except the command-line tool) plus
the CFFI glue, so ``pip install ./bindings/python`` needs a C compiler,
libjansson and libuuid but no CMake and no installed libtasker.

``cdef()`` cannot read preprocessor lines or attributes, so the declarations
are derived from ``include/tasker.h`` here: integer ``#define``s become
``#define NAME ...`` (their values are taken from the real header at compile
time), every other preprocessor line and the C++ guard are dropped, and
``TASKER_API`` is removed.  Because the extension is compiled against the real
header, any declaration that drifts from it is a compile error, not a silent
ABI mismatch.

The repository's sources are found, in order, through:
  1. the environment variable TASKER_SOURCE_DIR (a checkout's root),
  2. the directories above this file (pip >= 21.3 builds in place, so
     ``bindings/python/../..`` is the repository root).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def find_source_root() -> Path:
    """Returns the repository root that holds include/tasker.h and capi/."""
    candidates = []
    env = os.environ.get("TASKER_SOURCE_DIR")
    if env:
        candidates.append(Path(env))
    candidates.extend(HERE.parents)
    for root in candidates:
        if (root / "include" / "tasker.h").is_file() and (root / "capi").is_dir():
            return root.resolve()
    raise RuntimeError(
        "tasker build: cannot find the tasker sources (include/tasker.h and capi/) above "
        f"{HERE}.  Build from a checkout with `pip install ./bindings/python` (pip >= 21.3 "
        "builds in place), or set TASKER_SOURCE_DIR to the repository root."
    )


# `#define TASKER_X <integer constant expression>`: 42, (-1), 0xfffu, (1u << 3).
_INT_DEFINE = re.compile(r"^#\s*define\s+(TASKER_[A-Z0-9_]+)\s+([-()\s0-9a-fA-FxXuUlL<|]+)$")
_PLAIN_INT = re.compile(r"^\(?\s*(-?\s*\d+)\s*\)?$")


def header_to_cdef(text: str) -> str:
    """Turns tasker.h into declarations that cffi's cdef() accepts."""
    # Join continuation lines first so multi-line macros are one line.
    text = re.sub(r"\\\n", " ", text)
    # Comments may sit inside declarations; drop them all.
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)

    out = []
    int_defines: dict[str, str] = {}
    # A tiny conditional stack: the only conditionals in the header are the
    # include guard (kept), the C++ guard and the export-macro selection.
    stack: list[bool] = []

    def active() -> bool:
        return all(stack)

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            directive = line[1:].strip()
            if directive.startswith(("ifndef", "ifdef", "if ")):
                if directive.startswith("ifndef") and directive.split()[1] == "TASKER_H":
                    stack.append(True)
                else:
                    # __cplusplus and TASKER_BUILDING_LIBRARY: not for cdef.
                    stack.append(False)
            elif directive.startswith("else"):
                if stack:
                    stack[-1] = not stack[-1]
            elif directive.startswith("endif"):
                if stack:
                    stack.pop()
            elif directive.startswith("define") and active():
                m = _INT_DEFINE.match(line)
                if m and any(ch.isdigit() for ch in m.group(2)):
                    plain = _PLAIN_INT.match(m.group(2).strip())
                    int_defines[m.group(1)] = plain.group(1).replace(" ", "") if plain else ""
            continue
        if active() and line:
            out.append(raw)

    body = "\n".join(out)
    body = re.sub(r"\bTASKER_API\b", "", body)
    # Array sizes written with a macro (char uuid_out[TASKER_UUID_BUFSIZE]).
    for name, value in int_defines.items():
        if value:
            body = re.sub(r"\[\s*%s\s*\]" % name, "[%s]" % value, body)
    defines = "\n".join("#define %s ..." % name for name in int_defines)
    return defines + "\n" + body


# Small C helpers compiled into the extension.  They exist to cut the number
# of Python->C crossings on hot paths (each crossing converts arguments and
# releases the GIL), and to fill versioned structs in C so Python does not
# allocate one per call.
HELPERS_CDEF = """
extern "Python" void _tpy_free_ptr(void *);
extern "Python" void _tpy_event(const tasker_event *, void *);
extern "Python" void _tpy_event_free(void *);

#define TPY_CLAIM_TEXT_PER_STEP ...

int tpy_task_create(char *uuid_out, tasker_coordinator *coord, const char *ns,
                    const char *name, const char *version, const char *context,
                    size_t context_len, const char *idempotency_key, int32_t priority);
int tpy_step_fail(tasker_step *step, const char *error_class, const char *message,
                  int retryable, int64_t retry_after_ms, const char *context_json);
int tpy_step_dependency(void **ptr_out, const char **json_out, size_t *len_out,
                        const tasker_step *step, const char *dep_name);
void tpy_complete_batch(int *rc_out, tasker_step *const *steps, void *const *ptrs,
                        size_t n, void (*free_ptr)(void *));
size_t tpy_claim(tasker_step **steps_out, char *text_out, size_t *text_len_out,
                 int *rc_out, tasker_coordinator *coord, size_t max);
"""

HELPERS_SOURCE = r"""
#include <string.h>
#include <tasker.h>

static int tpy_task_create(char *uuid_out, tasker_coordinator *coord, const char *ns,
                           const char *name, const char *version, const char *context,
                           size_t context_len, const char *idempotency_key, int32_t priority)
{
    tasker_task_request req = TASKER_TASK_REQUEST_INIT;
    req.ns = ns;
    req.name = name;
    req.template_version = version;
    req.context_json = context;
    req.context_len = context_len;
    req.idempotency_key = idempotency_key;
    req.priority = priority;
    return tasker_task_create(uuid_out, coord, &req);
}

static int tpy_step_fail(tasker_step *step, const char *error_class, const char *message,
                         int retryable, int64_t retry_after_ms, const char *context_json)
{
    tasker_failure f = TASKER_FAILURE_INIT;
    f.error_class = error_class;
    f.message = message;
    f.retryable = retryable;
    f.retry_after_ms = retry_after_ms;
    f.context_json = context_json;
    return tasker_step_fail(step, &f);
}

/* 1: in-process pointer result, 2: JSON result, < 0: a tasker error code. */
static int tpy_step_dependency(void **ptr_out, const char **json_out, size_t *len_out,
                               const tasker_step *step, const char *dep_name)
{
    int rc = tasker_step_dependency_pointer(ptr_out, step, dep_name);
    if (rc == TASKER_OK)
        return 1;
    if (rc != TASKER_ENOTSUP)
        return rc;
    rc = tasker_step_dependency_result(json_out, len_out, step, dep_name);
    return rc == TASKER_OK ? 2 : rc;
}

/* Completes n steps successfully: ptrs NULL or ptrs[i] NULL means "no
 * result", anything else is an in-process result freed with free_ptr.  A
 * batch without results goes to the library in one call (one lock). */
static void tpy_complete_batch(int *rc_out, tasker_step *const *steps, void *const *ptrs,
                               size_t n, void (*free_ptr)(void *))
{
    if (ptrs == NULL) {
        if (tasker_steps_succeed(rc_out, steps, NULL, NULL, n) != TASKER_OK)
            for (size_t i = 0; i < n; i++)
                rc_out[i] = TASKER_EINVAL;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (ptrs == NULL || ptrs[i] == NULL)
            rc_out[i] = tasker_step_succeed(steps[i], NULL, 0);
        else
            rc_out[i] = tasker_step_succeed_pointer(steps[i], ptrs[i], free_ptr);
    }
}

/* Room one claimed step takes in tpy_claim's text: a UUID and two names of
 * at most 255 bytes (the library's limit), each with its NUL. */
#define TPY_CLAIM_TEXT_PER_STEP (TASKER_UUID_BUFSIZE + 2 * 256)

static char *tpy_put(char *p, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > 255) /* cannot happen with valid names; never overflow anyway */
        n = 255;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p + n + 1;
}

/* Claims up to max steps.  For each it writes "task_uuid\0step\0handler\0"
 * to text_out (room: max * TPY_CLAIM_TEXT_PER_STEP bytes), so the binding
 * turns a whole batch into Python strings with one conversion instead of
 * three per step.  A task UUID or handler name equal to the previous step's
 * (same task, same handler: common, as a task's ready steps are claimed
 * together) is written empty, sparing the binding a string per step.
 * Returns the number claimed; *rc_out is the claim's status. */
static size_t tpy_claim(tasker_step **steps_out, char *text_out, size_t *text_len_out,
                        int *rc_out, tasker_coordinator *coord, size_t max)
{
    size_t n = 0;
    char *p = text_out;
    const char *prev_task = NULL, *prev_handler = NULL;
    *rc_out = tasker_coordinator_claim(steps_out, &n, coord, max);
    if (*rc_out != TASKER_OK)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        const char *task = tasker_step_task_uuid(steps_out[i]);
        const char *handler = tasker_step_handler_name(steps_out[i]);
        int same_task = prev_task && task && strcmp(task, prev_task) == 0;
        int same_handler = prev_handler && handler && strcmp(handler, prev_handler) == 0;
        p = tpy_put(p, same_task ? "" : task);
        p = tpy_put(p, tasker_step_name(steps_out[i]));
        p = tpy_put(p, same_handler ? "" : handler);
        prev_task = task;
        prev_handler = handler;
    }
    *text_len_out = (size_t)(p - text_out);
    return n;
}
"""


def library_sources(root: Path) -> list[str]:
    capi = root / "capi"
    sources = sorted(
        str(p) for p in capi.rglob("*.c") if "cli" not in p.relative_to(capi).parts[:1]
    )
    if not sources:
        raise RuntimeError(f"tasker build: no C sources under {capi}")
    return sources


# System libraries the C sources use: (pkg-config name, library, header that
# marks a source as needing it or None when always needed).
SYSTEM_LIBRARIES = [
    ("jansson", "jansson", None),
    ("uuid", "uuid", None),
    ("libpq", "pq", "libpq-fe.h"),
    ("libmicrohttpd", "microhttpd", "microhttpd.h"),
]


def _pkg_config(package: str) -> tuple[list[str], list[str], list[str]] | None:
    """(include dirs, library dirs, libraries) from pkg-config, or None."""
    exe = shutil.which("pkg-config")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--cflags", "--libs", package], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    incs, libdirs, libs = [], [], []
    for tok in shlex.split(out):
        if tok.startswith("-I"):
            incs.append(tok[2:])
        elif tok.startswith("-L"):
            libdirs.append(tok[2:])
        elif tok.startswith("-l"):
            libs.append(tok[2:])
    return incs, libdirs, libs


def system_libraries(sources: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Include dirs, library dirs and libraries for the sources being built.

    Mirrors the CMake build: jansson and uuid always; libpq and libmicrohttpd
    when a source includes their header.
    """
    # Headers count too: a source may get libpq-fe.h through a private header.
    files = set(sources)
    for src in sources:
        files.update(str(h) for h in Path(src).parent.glob("*.h"))
    texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in sorted(files)]
    incs: list[str] = []
    libdirs: list[str] = []
    libs: list[str] = []
    for package, lib, header in SYSTEM_LIBRARIES:
        if header is not None and not any(header in t for t in texts):
            continue
        found = _pkg_config(package)
        if found is None:
            if package == "libpq" and Path("/usr/include/postgresql").is_dir():
                found = (["/usr/include/postgresql"], [], [lib])
            else:
                found = ([], [], [lib])
        for src, dst in zip(found, (incs, libdirs, libs)):
            dst.extend(x for x in src if x not in dst)
    libs.append("pthread")
    return incs, libdirs, libs


def make_ffibuilder() -> FFI:
    root = find_source_root()
    header = (root / "include" / "tasker.h").read_text(encoding="utf-8")
    ffibuilder = FFI()
    ffibuilder.cdef(header_to_cdef(header) + HELPERS_CDEF)
    sources = library_sources(root)
    sys_incs, sys_libdirs, sys_libs = system_libraries(sources)
    ffibuilder.set_source(
        "tasker._native",
        HELPERS_SOURCE,
        sources=sources,
        include_dirs=[str(root / "include"), str(root / "capi")] + sys_incs,
        library_dirs=sys_libdirs,
        libraries=sys_libs,
        define_macros=[("_GNU_SOURCE", None)],
        extra_compile_args=["-fvisibility=hidden", "-std=c11"],
    )
    return ffibuilder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    # `python build_ffi.py` builds the extension in place for development.
    sys.exit(0 if ffibuilder.compile(tmpdir=str(HERE / "build-cffi"), verbose=True) else 1)
