"""Where the service keeps everything: a SQL database and a content-addressed file store.

The database holds scans, their files, results, officers' decisions, users,
tokens, settings and the audit log. It is SQLite in WAL mode by default (no
set-up: one file in the data folder) or PostgreSQL chosen by URL, through the
same SQLAlchemy Core code; :data:`MIGRATIONS` brings either schema up to
date at start-up.

Bytes (scans as received, annotated images, result JSON, TDRs) live in a
:class:`BlobStore` under their sha256, written durably (fsync, then rename)
before any row names them. Names from a request never reach the file system:
a blob's path is its hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from nii.files import replace_file

__all__ = ["BlobStore", "MAX_ROW_ID", "MIGRATIONS", "Store", "StoreError", "connect", "utc_now"]

#: Scan lifecycle: accepted and waiting, being analysed, finished with a
#: result, or refused by the pipeline (``error`` says why).
SCAN_STATES = ("queued", "running", "done", "failed")

#: The largest number an ``sa.Integer`` column holds on every supported
#: database (PostgreSQL's INTEGER is 32-bit): a larger id or offset in a
#: request can name no row, and is refused before it reaches the database.
MAX_ROW_ID = 2**31 - 1

metadata = sa.MetaData()

scans = sa.Table(
    "scans", metadata,
    sa.Column("scan_id", sa.String(128), primary_key=True),
    sa.Column("received_at", sa.String(32), nullable=False, index=True),
    sa.Column("source", sa.String(16), nullable=False),  # http, dicom, hotfolder, samples
    sa.Column("submitted_by", sa.String(64)),
    sa.Column("kind", sa.String(32)),
    sa.Column("scanner_id", sa.String(64), index=True),
    sa.Column("acquired_at", sa.String(32)),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("decision", sa.String(8), index=True),  # the machine's ALARM / CLEAR
    sa.Column("alert_count", sa.Integer),
    sa.Column("alarm_count", sa.Integer),
    sa.Column("finished_at", sa.String(32)),
    # Bumped on every change, so the live queue can ask "what changed since".
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="0", index=True),
)

scan_files = sa.Table(
    "scan_files", metadata,
    sa.Column("scan_id", sa.String(128), sa.ForeignKey("scans.scan_id"), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)

results = sa.Table(
    "results", metadata,
    sa.Column("scan_id", sa.String(128), sa.ForeignKey("scans.scan_id"), primary_key=True),
    sa.Column("result_sha256", sa.String(64), nullable=False),
    sa.Column("annotated_sha256", sa.String(64), nullable=False),
    sa.Column("tdr_sha256", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(128)),
    sa.Column("models", sa.Text, nullable=False),  # "name version sha256" lines
    sa.Column("created_at", sa.String(32), nullable=False),
)

decisions = sa.Table(
    "decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("scan_id", sa.String(128), sa.ForeignKey("scans.scan_id"), nullable=False, index=True),
    sa.Column("decided_at", sa.String(32), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # clear, search, threat
    sa.Column("category", sa.String(32)),
    sa.Column("note", sa.Text),
    sa.Column("supersedes", sa.Integer),  # the decision a supervisor reversed
)

users = sa.Table(
    "users", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),  # the token itself is never stored
    sa.Column("username", sa.String(64), sa.ForeignKey("users.username"), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)

settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("updated_by", sa.String(64)),
)

audit = sa.Table(
    "audit", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("username", sa.String(64)),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(160)),
    sa.Column("detail", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Cases (issue #10): what officers found after a search, and the files of it.
cases = sa.Table(
    "cases", metadata,
    sa.Column("case_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("opened_at", sa.String(32), nullable=False, index=True),
    sa.Column("opened_by", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open, referred, closed
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("category", sa.String(32)),  # DICOS threat category of what was found
    sa.Column("description", sa.Text),
    sa.Column("quantity", sa.String(64)),  # estimated quantity or weight, as the officer wrote it
    sa.Column("seized", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("bag_tag", sa.String(64)),
    sa.Column("container_number", sa.String(64)),
    sa.Column("declaration_number", sa.String(64)),
)

case_scans = sa.Table(
    "case_scans", metadata,
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.case_id"), primary_key=True),
    sa.Column("scan_id", sa.String(128), sa.ForeignKey("scans.scan_id"), primary_key=True),
)

case_notes = sa.Table(
    "case_notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.case_id"), nullable=False, index=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
)

case_attachments = sa.Table(
    "case_attachments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.case_id"), nullable=False, index=True),
    sa.Column("added_at", sa.String(32), nullable=False),
    sa.Column("added_by", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),  # made safe by intake.safe_name
    sa.Column("media_type", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)

# Columns added after version 1; migration 3 adds them to older databases.
_ADDED_COLUMNS = {
    "decisions": [("operator_tdr_sha256", sa.String(64))],  # the officer's DICOS TDR
    "scans": [("lane", sa.String(64))],  # the screening lane, for reporting
}
for _table, _columns in _ADDED_COLUMNS.items():
    for _name, _type in _columns:
        metadata.tables[_table].append_column(sa.Column(_name, _type))

schema_migrations = sa.Table(
    "schema_migrations", sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.String(32), nullable=False),
)

_APPEND_ONLY = {
    # The hash chain makes tampering detectable; these triggers make the
    # obvious kind (an UPDATE or DELETE through SQL) fail outright.
    "sqlite": [
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    ],
}


def _create_tables(conn: Connection) -> None:
    metadata.create_all(conn)


def _cases_and_lanes(conn: Connection) -> None:
    # A database made at version 1 or 2 lacks these; one made later has them
    # already (version 1 creates the current tables), so each step checks.
    metadata.create_all(conn, tables=[cases, case_scans, case_notes, case_attachments], checkfirst=True)
    inspector = sa.inspect(conn)
    for table, columns in _ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        for name, type_ in columns:
            if name not in present:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {type_.compile(dialect=conn.dialect)}")


def _append_only_audit(conn: Connection) -> None:
    for statement in _APPEND_ONLY.get(conn.dialect.name, []):
        conn.exec_driver_sql(statement)


#: Schema versions in order; each runs once, in its own transaction, and is
#: recorded in ``schema_migrations``. Never edit one that has shipped: add
#: the next.
MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "scans, files, results, decisions, users, tokens, settings, audit", _create_tables),
    (2, "audit log is append-only", _append_only_audit),
    (3, "cases, their scans, notes and attachments; operator TDRs; lanes", _cases_and_lanes),
)


class StoreError(OSError):
    """The store cannot be opened or used; ``str(err)`` is one line."""


def utc_now() -> str:
    """Now, as the store writes times: ISO 8601 UTC, microseconds, ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def connect(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    SQLite runs in WAL mode with full sync, so a commit is on disk before
    the service answers, and every transaction takes the write lock at
    BEGIN (``BEGIN IMMEDIATE``): two workers claiming the same queued scan
    would otherwise both read it before either writes.
    """
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN below, not pysqlite's
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

            @sa.event.listens_for(engine, "begin")
            def _begin_immediate(conn: Connection) -> None:
                # Readers (Store.read) need no lock in WAL mode: a plain BEGIN.
                conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE")

            return engine
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10)
    except (sa.exc.ArgumentError, ImportError) as err:
        raise StoreError(f"database URL {_redacted(url)}: {err}") from None


def _redacted(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparseable)"


def migrate(engine: Engine) -> list[int]:
    """Apply the migrations this database lacks; return the versions applied."""
    applied: list[int] = []
    with engine.begin() as conn:
        schema_migrations.create(conn, checkfirst=True)
    for version, _about, step in MIGRATIONS:
        with engine.begin() as conn:
            if conn.execute(sa.select(schema_migrations.c.version).where(
                    schema_migrations.c.version == version)).first():
                continue
            step(conn)
            conn.execute(schema_migrations.insert().values(version=version, applied_at=utc_now()))
            applied.append(version)
    return applied


class BlobStore:
    """Bytes kept under their sha256: ``root/ab/abcdef...``.

    Writing the same bytes twice stores them once. A blob is fsynced and
    renamed into place, so a crash leaves either the whole blob or none.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (it may not exist)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        replace_file(target, data)
        return digest

    def get(self, sha256: str) -> bytes:
        """The bytes of blob ``sha256``."""
        return self.path(sha256).read_bytes()


@dataclasses.dataclass
class Store:
    """The database and blob store of one service data folder.

    Parameters
    ----------
    engine : Engine
        From :func:`connect`.
    blobs : BlobStore
    """

    engine: Engine
    blobs: BlobStore

    @classmethod
    def open(cls, data_dir: str | os.PathLike, url: str | None = None, *, existing: bool = False) -> Store:
        """Open (creating and migrating) the store of ``data_dir``.

        ``url`` selects the database; by default ``data_dir/nii.sqlite3``.
        With ``existing``, the database must already hold a store: commands
        that only read (audit verify, reports, evidence) must not pass an
        emptied or foreign database as a new, empty store, nor create one.

        Raises
        ------
        StoreError
            One line: the folder cannot be created, the database reached, or
            (``existing``) it holds no store.
        """
        data_dir = Path(data_dir)
        engine = connect(url or f"sqlite:///{(data_dir / 'nii.sqlite3').resolve()}")
        if existing:
            try:
                held = sa.inspect(engine).has_table(schema_migrations.name)
            except sa.exc.SQLAlchemyError as err:
                raise StoreError(f"database {_redacted(str(engine.url))}: "
                                 f"{' '.join(str(err.orig or err).split())[:300]}") from None
            if not held:
                raise StoreError(f"database {_redacted(str(engine.url))} holds no nii store (no tables); "
                                 "check --data or --database")
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            blobs = BlobStore(data_dir / "blobs")
        except OSError as err:
            raise StoreError(f"data folder {data_dir}: {err.strerror or err}") from None
        try:
            migrate(engine)
        except sa.exc.SQLAlchemyError as err:
            raise StoreError(f"database {_redacted(str(engine.url))}: "
                             f"{' '.join(str(err.orig or err).split())[:300]}") from None
        return cls(engine, blobs)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction; commits on leaving, rolls back on an exception."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite it takes no write lock, so it never waits for writers."""
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            yield conn

    def lock_audit(self, conn: Connection) -> None:
        """Serialise audit appends (SQLite's BEGIN IMMEDIATE already does)."""
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE audit IN EXCLUSIVE MODE")

    def next_revision(self, conn: Connection) -> int:
        """A revision number above every scan's, for the live queue."""
        current = conn.execute(sa.select(sa.func.max(scans.c.revision))).scalar()
        return int(current or 0) + 1

    def claim_scan(self, conn: Connection) -> str | None:
        """Mark the oldest queued scan running and return its id (None if none)."""
        query = sa.select(scans.c.scan_id).where(scans.c.status == "queued").order_by(
            scans.c.received_at).limit(1)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        scan_id = conn.execute(query).scalar()
        if scan_id is None:
            return None
        conn.execute(scans.update().where(scans.c.scan_id == scan_id).values(
            status="running", attempts=scans.c.attempts + 1, revision=self.next_revision(conn)))
        return scan_id

    def requeue_unfinished(self) -> list[str]:
        """At start-up: scans left running by a crash go back to the queue."""
        with self.transaction() as conn:
            ids = list(conn.execute(sa.select(scans.c.scan_id).where(scans.c.status == "running")).scalars())
            if ids:
                conn.execute(scans.update().where(scans.c.scan_id.in_(ids)).values(
                    status="queued", revision=self.next_revision(conn)))
        return ids

    def files_of(self, conn: Connection, scan_id: str) -> Sequence[sa.Row]:
        """The files a scan was received as: name, sha256, size."""
        return conn.execute(sa.select(scan_files).where(scan_files.c.scan_id == scan_id)
                            .order_by(scan_files.c.name)).all()
