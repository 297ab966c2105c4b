"""A target's connection as libpq reads it, parsed once, and the form each component takes it in.

Teams write connection strings in every form libpq accepts: `postgresql://` and `postgres://` URLs, a Unix socket
in `?host=` (Cloud SQL's `postgresql://USER:PASSWORD@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE`), several hosts,
query parameters (`sslmode`, `sslrootcert`, even a `dbname=` that overrides the path), `key=value` strings. libpq's
own parser (psycopg's `conninfo_to_dict`) reads them, and every component (psycopg, pg_dump and pg_restore, the
Django probe, the project's settings) takes its connection from that one parse, so all of them reach one database.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbpromote.errors import ConfigError

# libpq's keywords and the variables that set them (libpq's "Environment Variables"): pg_dump and pg_restore read
# the connection from these, so that a password never goes on a command line, where `ps` shows it. libpq has no
# variable for the keepalives_* keywords: those reach psycopg and the probe only.
LIBPQ_VARIABLES = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
# Django's DATABASES keys for the keywords it names; every other keyword goes into OPTIONS, which Django hands to
# the driver as connection parameters.
UNKNOWN_KEYWORD = re.compile(r'invalid (?:connection option|URI query parameter):? "(\w+)"')
DJANGO_KEYS = {"dbname": "NAME", "user": "USER", "password": "PASSWORD", "host": "HOST", "port": "PORT"}
EXAMPLES = (
    "postgresql://USER:PASSWORD@HOST:PORT/DB, host=HOST dbname=DB user=USER password=PASSWORD or "
    "postgresql://USER:PASSWORD@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE"
)


class Conninfo:
    """One connection string, parsed by libpq's rules; refused in one sentence (that never shows it: it holds the
    password) when libpq would refuse it."""

    def __init__(self, text: str):
        if not text.strip():
            raise ConfigError(f"The connection string is empty; give one libpq accepts, such as {EXAMPLES}.")
        try:
            self.params: dict[str, str] = {key: str(value) for key, value in conninfo_to_dict(text).items()}
            reason = _misread(text, self.params)
        except psycopg.ProgrammingError as error:
            # libpq's own message quotes the string where it stopped, password and all: only a keyword's name is said.
            unknown = UNKNOWN_KEYWORD.search(str(error))
            reason = f"libpq knows no parameter {unknown.group(1)!r}" if unknown else "it does not parse"
        if reason:
            raise ConfigError(
                f"The connection string is not one libpq accepts ({reason}; the string is not shown here: it holds "
                f"the password); give one such as {EXAMPLES}, and in a URL percent-encode reserved characters in "
                "the user and password (@ as %40, : as %3A, / as %2F, % as %25)."
            ) from None

    @property
    def database(self) -> str:
        """The database libpq connects to: `dbname`, else (libpq's default) the user's name."""
        return self.params.get("dbname") or self.params.get("user", "")

    @property
    def password(self) -> str:
        return self.params.get("password", "")

    def on_database(self, database: str) -> str:
        """The same server, role and parameters, another database."""
        return make_conninfo(**(self.params | {"dbname": database}))

    def libpq_env(self) -> dict[str, str]:
        """The connection as PG* variables, for pg_dump, pg_restore and psql."""
        return {LIBPQ_VARIABLES[key]: value for key, value in self.params.items() if key in LIBPQ_VARIABLES}

    def django(self) -> dict:
        """The connection as a DATABASES entry's keys (the rest of libpq's keywords in OPTIONS)."""
        entry: dict = {name: self.params.get(key, "") for key, name in DJANGO_KEYS.items()}
        entry["OPTIONS"] = {key: value for key, value in self.params.items() if key not in DJANGO_KEYS}
        return entry

    def url(self) -> str:
        """A postgresql:// URL that says the same, for settings that read a DATABASE_URL (dj-database-url,
        django-environ): a socket directory as the percent-encoded host, the other keywords as query parameters."""
        user = quote(self.params.get("user", ""), safe="")
        password = f":{quote(self.password, safe='')}" if self.password else ""
        hosts = self.params.get("host", "").split(",")
        ports = self.params.get("port", "").split(",")
        address = ",".join(
            quote(host, safe="") + (f":{port}" if port else "")
            for host, port in zip(hosts, ports + [ports[-1]] * (len(hosts) - len(ports)), strict=False)
        )
        rest = {key: value for key, value in self.params.items() if key not in DJANGO_KEYS}
        query = f"?{urlencode(rest)}" if rest else ""
        credentials = f"{user}{password}@" if user or password else ""
        return f"postgresql://{credentials}{address}/{quote(self.database, safe='')}{query}"


def _misread(text: str, params: dict[str, str]) -> str:
    """Why libpq, which parsed the string, would read it otherwise than it was meant: a raw @ in a URL's password
    makes the rest of it the host, a raw : or / makes it a port; empty when nothing is amiss."""
    if text.startswith(("postgresql://", "postgres://")) and text.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
        return "a raw @ in the user or password ends them early"
    if not all(port.strip().isdigit() for port in params.get("port", "").split(",") if port.strip()):
        return "a port that is not a number, such as a raw : or / in the password makes"
    return ""
