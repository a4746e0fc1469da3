/*
 * libFuzzer target for template JSON: tasker_template_from_json and
 * tasker_template_register_json on arbitrary bytes.  Besides "no crash, no
 * leak, no undefined behaviour" it checks two properties that must hold for
 * every input the parser accepts:
 *   - print -> parse -> print is a fixed point (to_json loses nothing the
 *     parser keeps, and emits nothing the parser refuses);
 *   - a template that registered can be registered again from its own
 *     to_json output and is found identical (TASKER_OK, not TASKER_EEXIST).
 * Build: cmake -DTASKER_FUZZ=ON -DCMAKE_C_COMPILER=clang; run: see
 * scripts/test.d/30-fuzz.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker.h"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_template: property violated: %s\n", what);
        abort();
    }
}

static int valid_code(int rc)
{
    return rc == TASKER_OK || rc == TASKER_ETEMPLATE || rc == TASKER_EEXIST ||
           rc == TASKER_EINVAL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A length of 0 means strlen(); give it a real empty string then, since
     * the fuzzer's buffer is not NUL-terminated. */
    const char *text = size ? (const char *)data : "";

    tasker_template *t = NULL;
    int rc = tasker_template_from_json(&t, text, size);
    check(valid_code(rc), "from_json returned an undocumented code");
    if (rc == TASKER_OK) {
        check(t != NULL, "from_json succeeded without a template");
        char *j1 = NULL, *j2 = NULL;
        tasker_template *t2 = NULL;
        check(tasker_template_to_json(&j1, t) == TASKER_OK, "to_json of a parsed template");
        check(tasker_template_from_json(&t2, j1, 0) == TASKER_OK, "to_json output re-parses");
        check(tasker_template_to_json(&j2, t2) == TASKER_OK, "to_json of the re-parsed one");
        check(strcmp(j1, j2) == 0, "print -> parse -> print is a fixed point");
        tasker_free(j1);
        tasker_free(j2);
        tasker_template_free(t2);
        tasker_template_free(t);
    } else {
        check(t == NULL, "failed from_json left a template behind");
        check(tasker_error_last()->code == rc, "last error matches the returned code");
    }

    /* A small size limit too, so the oversize path is reachable. */
    tasker_config *cfg = NULL;
    tasker_coordinator *c = NULL;
    check(tasker_config_new(&cfg) == TASKER_OK, "config_new");
    check(tasker_config_set(cfg, "template.max_json_bytes", (size & 1) ? "4096" : "16777216") ==
              TASKER_OK,
          "config_set");
    check(tasker_config_set(cfg, "template.max_steps", "64") == TASKER_OK, "config_set");
    check(tasker_coordinator_open(&c, cfg) == TASKER_OK, "coordinator_open");
    tasker_config_free(cfg);

    rc = tasker_template_register_json(c, text, size);
    check(valid_code(rc), "register_json returned an undocumented code");
    if (rc == TASKER_OK) {
        tasker_template *t3 = NULL;
        char *j = NULL;
        check(tasker_template_from_json(&t3, text, size) == TASKER_OK,
              "what registered also parses");
        check(tasker_template_to_json(&j, t3) == TASKER_OK, "to_json");
        /* The printed form spells out every default, so it can be longer
         * than the text that registered: under the small size limit it may
         * be refused as too large (TASKER_ETEMPLATE), and for nothing else. */
        int rc2 = tasker_template_register_json(c, j, 0);
        check(rc2 == TASKER_OK || ((size & 1) && strlen(j) > 4096 && rc2 == TASKER_ETEMPLATE),
              "re-registering its own JSON is identical");
        check(tasker_template_register(c, t3) == TASKER_OK, "re-registering the parsed copy");
        tasker_free(j);
        tasker_template_free(t3);
    } else {
        const tasker_error *e = tasker_error_last();
        check(e->message != NULL && e->context_json != NULL, "error has message and context");
    }
    check(tasker_coordinator_close(c) == TASKER_OK, "coordinator_close");
    return 0;
}
