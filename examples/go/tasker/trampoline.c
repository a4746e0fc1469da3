/*
 * The C side of the Go binding.  tasker calls plain C function pointers from
 * its worker threads; these trampolines turn the void *userdata back into the
 * cgo.Handle number that names the Go handler and call into Go.  They live in
 * a .c file because a Go file with //export may only declare C functions.
 */
#include "_cgo_export.h"

static int tasker_go_trampoline(tasker_step *step, void *userdata)
{
    return taskerGoRunHandler(step, (uintptr_t)userdata);
}

/* Called once by the coordinator when it is freed (or when registration fails). */
static void tasker_go_release(void *userdata)
{
    taskerGoReleaseHandler((uintptr_t)userdata);
}

int tasker_go_handler_register(tasker_coordinator *coord, const char *name, uintptr_t handle)
{
    return tasker_handler_register(coord, name, tasker_go_trampoline, (void *)handle,
                                   tasker_go_release);
}
