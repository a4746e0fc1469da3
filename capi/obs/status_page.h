/* The operator's read-only status page, rendered as HTML on the server. */
#ifndef TASKER_OBS_STATUS_PAGE_H
#define TASKER_OBS_STATUS_PAGE_H

#include <stddef.h>

/*
 * Renders the HTML page from the text tasker_status_json() produced: tasks by
 * state per namespace, recent failures, dead letters and circuits.  Every
 * value taken from the JSON is HTML-escaped, so names and messages holding
 * markup show as text.  The page needs no JavaScript and reloads itself every
 * five seconds.  Writes a NUL-terminated page the caller frees with tk_free()
 * and its length (without the NUL).  Returns TASKER_OK, TASKER_EINVAL for
 * NULL arguments, TASKER_EINTERNAL when the JSON is not a status object, or
 * TASKER_ENOMEM.
 */
int tk_status_page_render(char **html_out, size_t *len_out, const char *status_json);

#endif
