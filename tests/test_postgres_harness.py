"""The PostgreSQL harness: a fresh database per test, clusters that stop and start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests import postgres
from tests.postgres import PgCluster, PostgresUnavailable

# Tests that start clusters of their own run real server processes; each is bounded in time.
cluster_test = pytest.mark.integration
bounded = pytest.mark.timeout(120)


def public_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [name for (name,) in rows]


def test_pg_url_is_an_empty_database_that_takes_a_table(pg_url: str) -> None:
    """pg_url is a database of the test's own, empty, where tables can be made."""
    assert public_tables(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE cards (id integer PRIMARY KEY, title text)")
        conn.execute("INSERT INTO cards VALUES (1, 'first')")
    assert public_tables(pg_url) == ["cards"]


def test_databases_do_not_see_each_others_tables(
    pg_url: str, make_pg_url: Callable[[], str]
) -> None:
    """Two fresh databases are distinct: a table made in one is absent from the other."""
    other = make_pg_url()
    assert other != pg_url
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE cards (id integer)")
    assert public_tables(other) == []


def test_a_database_with_open_connections_is_dropped(postgres_server: str) -> None:
    """drop_database drops a database even while connections to it are still open."""
    url = postgres.create_database(postgres_server)
    leftover = psycopg.connect(url)
    try:
        postgres.drop_database(postgres_server, url)
    finally:
        leftover.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()


@cluster_test
@bounded
@pytest.mark.parametrize("halt", ["stop", "kill"])
def test_cluster_refuses_connections_when_down_and_keeps_data(
    pg_cluster: PgCluster, halt: str
) -> None:
    """A stopped or killed cluster refuses connections; started again, it has its data."""
    with psycopg.connect(pg_cluster.url()) as conn:
        conn.execute("CREATE TABLE kept (id integer)")
        conn.execute("INSERT INTO kept VALUES (7)")
    getattr(pg_cluster, halt)()
    assert not pg_cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_cluster.url(), connect_timeout=2).close()
    pg_cluster.start()
    assert pg_cluster.running
    with psycopg.connect(pg_cluster.url()) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]


@cluster_test
@bounded
def test_restart_keeps_the_port_and_the_data(pg_cluster: PgCluster) -> None:
    """restart() brings the cluster back at the same URL with its committed rows."""
    url = pg_cluster.url()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 1 AS id")
    pg_cluster.restart()
    assert pg_cluster.url() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(1,)]


@cluster_test
@bounded
def test_cluster_as_context_manager_removes_its_folder() -> None:
    """A cluster used with `with` runs inside the block and is gone, folder and all, after it."""
    with PgCluster() as cluster:
        assert cluster.running
        psycopg.connect(cluster.url(), connect_timeout=2).close()
        root = cluster.root
    assert not cluster.running
    assert not root.exists()


@cluster_test
@bounded
def test_find_postgres_honours_the_environment_url(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$GITLAB2TRELLO_TEST_DATABASE_URL is the server used, as given, and is left running."""
    monkeypatch.setenv(postgres.ENV_URL, pg_cluster.url())
    url, stop = postgres.find_postgres()
    assert url == pg_cluster.url()
    stop()
    assert pg_cluster.running


def test_find_postgres_reports_an_unreachable_environment_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unreachable $GITLAB2TRELLO_TEST_DATABASE_URL is an error naming the variable."""
    closed = f"postgresql://postgres:hunter2@127.0.0.1:{postgres.free_port()}/postgres"
    monkeypatch.setenv(postgres.ENV_URL, closed)
    with pytest.raises(PostgresUnavailable, match=postgres.ENV_URL) as failure:
        postgres.find_postgres()
    assert "hunter2" not in str(failure.value)


@cluster_test
@bounded
def test_find_postgres_starts_a_cluster_when_no_server_is_around(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no variable and nothing at the local URL, a cluster is started; stop removes it."""
    monkeypatch.delenv(postgres.ENV_URL, raising=False)
    monkeypatch.setattr(
        postgres, "LOCAL_URL", f"postgresql://postgres@127.0.0.1:{postgres.free_port()}/postgres"
    )
    url, stop = postgres.find_postgres()
    try:
        assert postgres.create_database(url)
    finally:
        stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()


def test_no_postgresql_at_all_is_an_error_saying_how_to_provide_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a server or binaries, find_postgres fails (never skips) and says what to do."""
    monkeypatch.delenv(postgres.ENV_URL, raising=False)
    monkeypatch.setattr(
        postgres, "LOCAL_URL", f"postgresql://postgres@127.0.0.1:{postgres.free_port()}/postgres"
    )
    monkeypatch.setattr(postgres, "PG_ROOT", tmp_path)
    with pytest.raises(PostgresUnavailable, match="make postgres") as failure:
        postgres.find_postgres()
    assert postgres.ENV_URL in str(failure.value)
