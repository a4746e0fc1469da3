/* Templates: named steps, their dependencies and options; graph checks. */
#ifndef TASKER_CORE_TEMPLATE_H
#define TASKER_CORE_TEMPLATE_H

#include <stdint.h>
#include "core/hash.h"

#include "tasker.h"

typedef struct tk_tstep {
    char *name;
    char *handler;
    char **deps;           /* names as given */
    uint32_t n_deps;
    uint32_t *dep_idx;     /* resolved by tk_template_finalize */
    uint32_t *dependents;  /* steps that depend on this one */
    uint32_t n_dependents;
    tasker_step_options opts;
} tk_tstep;

typedef struct tk_name_ent {
    const char *name;
    uint32_t idx;
    UT_hash_handle hh;
} tk_name_ent;

struct tasker_template {
    char *ns, *name, *version;
    char *key; /* "ns/name@version" */
    tk_tstep *steps;
    uint32_t n_steps, cap;
    tk_name_ent *index;
    uint32_t *roots;
    uint32_t n_roots;
    int finalized;
};

/* Index of step `name`, or -1. */
int64_t tk_template_find(const tasker_template *t, const char *name);

/* Resolves dependencies, rejects unknown ones and cycles, computes dependents
 * and roots.  Returns TASKER_OK or an error set with tk_err. */
int tk_template_finalize(tasker_template *t, uint32_t max_steps);

/* Deep copy (not finalized). */
int tk_template_clone(tasker_template **out, const tasker_template *t);

/* Same namespace, name, version and steps. */
int tk_template_equal(const tasker_template *a, const tasker_template *b);

/* Parses JSON with a size limit. */
int tk_template_parse(tasker_template **out, const char *json, size_t len, size_t max_bytes);

/* Checks a namespace/template/step/handler name; returns NULL if fine, else why. */
const char *tk_name_problem(const char *s, int allow_slash_at);

/* Compares template versions ("2" > "10" is false: numeric parts compare as numbers). */
int tk_version_cmp(const char *a, const char *b);

#endif
