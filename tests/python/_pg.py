"""A real PostgreSQL for the tests: fresh, migrated databases on demand.

The server comes from TASKER_TEST_DATABASE_URL (scripts/test.d/50-python.sh
starts a throwaway cluster and sets it; scripts/lib/pgcluster.sh).  Without
it every test that needs PostgreSQL is skipped.  The schema is applied once
per session to a template database with psql (sql/NNNN_*.sql in order, the
way `tasker migrate` applies them); each test then gets its own database,
copied from the template (CREATE DATABASE ... TEMPLATE: tens of ms), so
tests never see each other's tasks, workers or templates.
"""

import glob
import itertools
import os
import re
import shutil
import subprocess
import urllib.parse

import pytest

URL = os.environ.get("TASKER_TEST_DATABASE_URL") or None
SQL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sql")
SKIP_REASON = "TASKER_TEST_DATABASE_URL is not set (scripts/test.d/50-python.sh sets it)"

STORES = ["memory", "postgres"]
# Runs a test that takes the `app` fixture once per store.
both_stores = pytest.mark.parametrize("app", STORES, indirect=True)

_names = itertools.count(1)


def psql_bin():
    pgbin = os.environ.get("TASKER_TEST_PGBIN")
    if pgbin and os.access(os.path.join(pgbin, "psql"), os.X_OK):
        return os.path.join(pgbin, "psql")
    found = shutil.which("psql")
    if found:
        return found
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))
    if cands:
        return cands[-1]
    raise RuntimeError("psql not found: install postgresql-client or set TASKER_TEST_PGBIN")


def with_dbname(url, dbname):
    """`url` (a postgresql:// URL or a key=value string) naming database `dbname`."""
    if re.match(r"^postgres(ql)?://", url):
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))
    # In a key=value string the last value of a key wins.
    return "%s dbname=%s" % (url, dbname)


def psql(url, *args, sql=None):
    cmd = [psql_bin(), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, *args]
    if sql is not None:
        cmd += ["-c", sql]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("psql %s failed: %s" % (" ".join(args) or sql, out.stderr.strip()))
    return out.stdout


def admin_url():
    return with_dbname(URL, "postgres")


def create_database(template=None):
    """A new database (copied from `template` if given); returns its URL."""
    name = "tasker_py_%d_%d" % (os.getpid(), next(_names))
    sql = 'CREATE DATABASE "%s"' % name
    if template:
        sql += ' TEMPLATE "%s"' % template
    psql(admin_url(), sql=sql)
    return name, with_dbname(URL, name)


def drop_database(name):
    try:
        psql(admin_url(), sql='DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    except RuntimeError:
        pass  # best effort: the cluster is thrown away anyway under scripts/test


def migrate(url):
    for path in sorted(glob.glob(os.path.join(SQL_DIR, "[0-9][0-9][0-9][0-9]_*.sql"))):
        psql(url, "-f", path)
