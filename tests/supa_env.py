"""Shared Supabase fixtures: a unique schema on the real PostgreSQL with the migrations
applied (twice), the PostgREST + Storage stand-in over it, and host keys (JWTs).

Loaded for every test module by `pytest_plugins` in tests/conftest.py:
  pg_admin      module: an autocommit superuser connection; Supabase's roles under the
                tests' names (ROLES: service_role BYPASSRLS) and prefetchd_host exist
  schema        a fresh empty schema (dropped afterwards)
  db            `schema` with Storage's `objects` table and 001 + 002 applied twice
  supa_server   a Supa (below) on `db`, without touching any prefetchd config
  supa          a Supa whose url/key are written into `env`'s config ([supabase])
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, sha

DSN = os.environ.get("PREFETCHD_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
SQL_DIR = REPO / "config" / "supabase"
MIGRATIONS = (SQL_DIR / "001_prefetchd.sql", SQL_DIR / "002_fleet.sql")
SERVICE_KEY = "test-service-role-key-0123456789"
ANON_KEY = "test-anon-key-0123456789"
JWT_SECRET = "test-jwt-secret-with-at-least-32-characters"
BUCKET = "user-files"
CACHE_BUCKET = "fleet-cache"


# Supabase's API roles under names of the tests' own. The cluster is shared: on this
# machine's PostgreSQL a `service_role` already exists *without* BYPASSRLS, and other
# databases may rely on it as it is. So the tests never use (or change) those roles:
# they create these, with the attributes Supabase gives its roles (service_role
# BYPASSRLS; authenticator LOGIN NOINHERIT, a member of the others), and the
# migrations and the stand-in are mapped onto them.
ROLES = {
    "anon": ("prefetchd_test_anon", "NOLOGIN"),
    "authenticated": ("prefetchd_test_authenticated", "NOLOGIN"),
    "service_role": ("prefetchd_test_service_role", "NOLOGIN BYPASSRLS"),
    "authenticator": ("prefetchd_test_authenticator", "LOGIN NOINHERIT"),
}
ROLE_NAMES = {supabase: ours for supabase, (ours, _) in ROLES.items()}
SERVICE_ROLE = ROLE_NAMES["service_role"]


def in_schema(text: str, schema: str) -> str:
    """A migration with its `public` objects (and search_path, and grants on the schema)
    moved into a test schema, Storage's `storage.objects` and `storage.buckets` onto
    that schema's tables, and Supabase's role names onto the tests' own (see ROLES), so
    the policies tested are the migration's own."""
    text = re.sub(r"\bstorage\.(objects|buckets)\b", rf"{schema}.\1", text)
    text = re.sub(r"\b(anon|authenticated|service_role|authenticator)\b",
                  lambda m: ROLE_NAMES[m.group(1)], text)
    text = re.sub(r"\bschema public\b", f"schema {schema}", text)
    return re.sub(r"\bpublic\b(?=\.| *,)", schema, text)


def migrate(pg_admin: Any, schema: str, files: tuple[Path, ...] = MIGRATIONS) -> None:
    with cluster_changes(pg_admin):
        for f in files:
            pg_admin.execute(in_schema(f.read_text(), schema))


def mint(group: str | None, host: str | None, role: str = "prefetchd_host", *,
         secret: str = JWT_SECRET, expires_in: float = 3600, **claims: Any) -> str:
    """A key for the stand-in (and for a real project, with its JWT secret): an HS256 JWT
    with `role`, and the fleet claims `group` and `host` when given."""
    import jwt

    now = int(time.time())
    body: dict[str, Any] = {"role": role, "iat": now, "exp": now + int(expires_in), **claims}
    if group is not None:
        body["group"] = group
    if host is not None:
        body["host"] = host
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable at {DSN}: {e}")
        pytest.skip(f"PostgreSQL is not reachable at {DSN}")
    ensure_roles(conn)
    yield conn
    conn.close()


#: a PostgreSQL advisory lock key: the cluster-wide changes (roles, their grants, the
#: migrations' grants to them) of concurrent test processes go one at a time, as two
#: ALTER ROLE or GRANT of the same role at once fail with "tuple concurrently updated"
CLUSTER_LOCK = 0x70666474


@contextlib.contextmanager
def cluster_changes(conn: Any) -> Iterator[None]:
    conn.execute("SELECT pg_advisory_lock(%s)", [CLUSTER_LOCK])
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [CLUSTER_LOCK])


def ensure_roles(conn: Any) -> None:
    """The roles of a Supabase project under the tests' names (ROLES), and the fleet's
    `prefetchd_host`; cluster-wide, so created once and shared by every schema. A role
    left with other attributes (by an older run) is given Supabase's again: these roles
    are the tests' own."""
    with cluster_changes(conn):
        _ensure_roles(conn)


def _ensure_roles(conn: Any) -> None:
    for ours, attrs in [*ROLES.values(), ("prefetchd_host", "NOLOGIN")]:
        # Another test run may create the role at the same moment: that is fine.
        conn.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                     f"'{ours}') THEN CREATE ROLE {ours} {attrs}; END IF; "
                     f"EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
        conn.execute(f"ALTER ROLE {ours} {attrs}")
    authenticator = ROLE_NAMES["authenticator"]
    for role in ("anon", "authenticated", "service_role"):
        conn.execute(f"GRANT {ROLE_NAMES[role]} TO {authenticator}")


@pytest.fixture
def schema(pg_admin: Any) -> Iterator[str]:
    name = f"pfd_{uuid.uuid4().hex[:10]}"
    pg_admin.execute(f"CREATE SCHEMA {name}")
    pg_admin.execute(f"GRANT USAGE ON SCHEMA {name} TO {ROLE_NAMES['anon']}, "
                     f"{ROLE_NAMES['authenticated']}, {SERVICE_ROLE}")
    yield name
    pg_admin.execute(f"DROP SCHEMA {name} CASCADE")


def storage_table(pg_admin: Any, schema: str) -> None:
    """Storage's object metadata, as storage.objects is on Supabase: row-level security
    on, every API role granted (the policies decide); and storage.buckets with the
    project's two buckets (no size limit unless a test sets one)."""
    roles = f"{ROLE_NAMES['anon']}, {ROLE_NAMES['authenticated']}, {SERVICE_ROLE}"
    pg_admin.execute(f"""CREATE TABLE {schema}.objects (
        bucket_id text NOT NULL, name text NOT NULL, etag text, size bigint, metadata jsonb,
        created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (bucket_id, name))""")
    pg_admin.execute(f"ALTER TABLE {schema}.objects ENABLE ROW LEVEL SECURITY")
    pg_admin.execute(f"GRANT ALL ON {schema}.objects TO {roles}")
    pg_admin.execute(f"CREATE TABLE {schema}.buckets (id text PRIMARY KEY,"
                     " file_size_limit bigint)")
    pg_admin.execute(f"INSERT INTO {schema}.buckets (id) VALUES (%s), (%s)",
                     [BUCKET, CACHE_BUCKET])
    pg_admin.execute(f"ALTER TABLE {schema}.buckets ENABLE ROW LEVEL SECURITY")
    pg_admin.execute(f"GRANT SELECT ON {schema}.buckets TO {roles}")


@pytest.fixture
def db(pg_admin: Any, schema: str) -> str:
    storage_table(pg_admin, schema)
    migrate(pg_admin, schema)
    migrate(pg_admin, schema)  # safe to apply twice
    pg_admin.execute(f"INSERT INTO {schema}.prefetchd_fleet_cache_buckets VALUES (%s)"
                     " ON CONFLICT DO NOTHING", [CACHE_BUCKET])
    return schema


class Supa:
    """The stand-in on one schema, and helpers to seed it as the project's owner."""

    def __init__(self, pg_admin: Any, schema: str, storage_dir: Path) -> None:
        self.pg, self.schema, self.storage_dir = pg_admin, schema, storage_dir
        self.servers: list[Any] = []
        self.srv = self.another()
        self.port = self.srv.server_address[1]

    def another(self, port: int = 0) -> Any:
        """One more stand-in (started) on the same schema and Storage directory: a
        second "Supabase front" for a second host, or the same one after a restart."""
        from tests.servers.supabase_api import SupabaseServer

        srv = SupabaseServer(DSN, self.schema, SERVICE_KEY, ANON_KEY, port=port,
                             jwt_secret=JWT_SECRET, storage_dir=self.storage_dir,
                             roles=ROLE_NAMES).start()
        self.servers.append(srv)
        return srv

    def restart(self) -> None:
        """After `srv.stop()`: the same URL answers again."""
        self.srv = self.another(port=self.port)

    def stop(self) -> None:
        for srv in self.servers:
            if srv.socket.fileno() != -1:
                srv.stop()

    def client(self, key: str = SERVICE_KEY, srv: Any = None) -> Any:
        """A supabase-py client as the daemon makes one (retries off)."""
        from supabase import ClientOptions, create_client

        return create_client((srv or self.srv).url, key, options=ClientOptions(
            schema=self.schema, postgrest_client_retry=False, auto_refresh_token=False,
            persist_session=False))

    def upload(self, provider: str, file_id: str, data: bytes | None = None, *,
               sha256: str | None = None, filename: str | None = None,
               storage: str | None = None) -> None:
        self.pg.execute(
            f"INSERT INTO {self.schema}.provider_file_uploads (provider, provider_file_id,"
            " sha256, filename, file_size_bytes, supabase_file_id) VALUES (%s,%s,%s,%s,%s,%s)",
            [provider, file_id, sha256 or (sha(data) if data is not None else None), filename,
             len(data) if data is not None else None, storage])

    def put_object(self, path: str, data: bytes, bucket: str = BUCKET, **meta: Any) -> str:
        """Store an object (bytes on disk, row in `objects`) as the owner; its ETag."""
        return self.srv.put_object(bucket, path, data, **meta)

    def object_bytes(self, path: str, bucket: str = BUCKET) -> bytes:
        return (self.storage_dir / bucket / path).read_bytes()

    def one(self, query: str, params: Any = None) -> Any:
        return self.pg.execute(query.format(s=self.schema), params).fetchone()


@pytest.fixture
def supa_server(pg_admin: Any, db: str, tmp_path_factory: Any) -> Iterator[Supa]:
    s = Supa(pg_admin, db, tmp_path_factory.mktemp("storage"))
    yield s
    s.stop()


@pytest.fixture
def supa(supa_server: Supa, env: Any, monkeypatch: Any) -> Supa:
    monkeypatch.setenv("SUPA_KEY", SERVICE_KEY)
    env.environ["SUPA_KEY"] = SERVICE_KEY
    env.write_config(extra=f"""
[supabase]
url = "{supa_server.srv.url}"
key = "env:SUPA_KEY"
bucket = "{BUCKET}"
schema = "{supa_server.schema}"
push_interval = "300ms"
""")
    return supa_server
