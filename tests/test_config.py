"""Unit tests of config.py: defaults, the file, environment overrides, validation, routing."""

from pathlib import Path

import pytest

import config

LIST_A = "0123456789abcdef01234567"
LIST_B = "89abcdef0123456789abcdef"
LIST_C = "aaaaaaaaaaaaaaaaaaaaaaaa"
LIST_D = "bbbbbbbbbbbbbbbbbbbbbbbb"
DONE = "dddddddddddddddddddddddd"


def write(tmp_path: Path, text: str, name: str = "config.ini") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, **env: str) -> config.Config:
    path = write(tmp_path, text)
    return config.load(environ={config.ENV_FILE: str(path), **env})


def problems_of(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load_text(tmp_path, text, **env)
    return str(info.value)


def test_defaults_from_empty_file(tmp_path):
    """An empty file gives every default of the schema."""
    cfg = load_text(tmp_path, "")
    assert cfg.path == tmp_path / "config.ini"
    assert cfg.server["max_body_bytes"] == 4194304
    assert cfg.server["log_level"] == "info"
    assert cfg.gitlab["secret_token"] == cfg.gitlab["signing_token"] == ""
    assert cfg.gitlab["signature_tolerance"] == 300
    assert cfg.gitlab["confidential"] == "skip"
    assert cfg.gitlab["types"] == ("Issue", "Incident")
    assert cfg.trello["api_url"] == "https://api.trello.com/1"
    assert cfg.trello["key"] == cfg.trello["token"] == cfg.trello["list_id"] == ""
    assert cfg.trello["done_list_id"] == ""
    assert cfg.trello["connect_timeout"] == 3.05
    assert cfg.trello["read_timeout"] == 10.0
    assert cfg.trello["max_requests_per_10s"] == 90
    assert cfg.trello["concurrency"] == 4
    assert cfg.store["database"] == "var/gitlab2trello.sqlite3"
    assert cfg.store["synchronous"] == "FULL"
    assert cfg.store["busy_timeout_ms"] == 10000
    assert cfg.store["group_commit"] is True
    assert cfg.worker["enabled"] is True
    assert cfg.worker["poll_interval"] == 0.2
    assert cfg.worker["retry_initial_wait"] == 1.0
    assert cfg.worker["retry_max_wait"] == 300.0
    assert cfg.worker["give_up_after"] == 259200.0
    assert cfg.default_routing == config.Routing(list_id="", done_list_id="", lists={}, members={})
    assert cfg.projects == {}


def test_environment_names_the_file(tmp_path):
    """GITLAB2TRELLO_CONFIG names the file that is read."""
    path = write(tmp_path, "[server]\nlog_level = debug\n", "other.ini")
    cfg = config.load(environ={"GITLAB2TRELLO_CONFIG": str(path)})
    assert cfg.path == path
    assert cfg.server["log_level"] == "debug"
    assert config.config_path({"GITLAB2TRELLO_CONFIG": str(path)}) == path


def test_without_environment_the_file_beside_the_module_is_used():
    """With no GITLAB2TRELLO_CONFIG the file is config.ini beside config.py."""
    assert config.config_path({}) == config.PROJECT_DIR / "config.ini"


def test_explicit_path_argument_is_read(tmp_path):
    """load(path) reads that file, whatever the environment says."""
    path = write(tmp_path, "[trello]\nconcurrency = 9\n", "given.ini")
    cfg = config.load(path, environ={"GITLAB2TRELLO_CONFIG": str(tmp_path / "nope.ini")})
    assert cfg.trello["concurrency"] == 9


def test_environment_overrides_file(tmp_path):
    """GITLAB2TRELLO_<SECTION>_<KEY> overrides the key of that name in the file."""
    cfg = load_text(
        tmp_path,
        "[server]\nlog_level = debug\n[trello]\ntoken = from-file\n",
        GITLAB2TRELLO_SERVER_LOG_LEVEL="WARNING",
        GITLAB2TRELLO_TRELLO_TOKEN="from-env",
        GITLAB2TRELLO_WORKER_ENABLED="off",
        GITLAB2TRELLO_TRELLO_LIST_ID=LIST_A,
    )
    assert cfg.server["log_level"] == "warning"
    assert cfg.trello["token"] == "from-env"
    assert cfg.worker["enabled"] is False
    assert cfg.default_routing.list_id == LIST_A


def test_bad_environment_value_is_reported(tmp_path):
    """A bad value from the environment is reported like one from the file."""
    message = problems_of(tmp_path, "", GITLAB2TRELLO_TRELLO_CONCURRENCY="0")
    assert "[trello] concurrency = '0': must be a positive integer" in message


def test_file_values_are_typed(tmp_path):
    """Values are parsed to their types: ints, floats, booleans, choices and comma lists."""
    cfg = load_text(
        tmp_path,
        "[gitlab]\ntypes = Issue , Task,, \nconfidential = Redact\n"
        "[store]\nsynchronous = normal\n[worker]\nenabled = no\npoll_interval = 1.5\n"
        "[trello]\napi_url = http://127.0.0.1:9000/1/\n",
    )
    assert cfg.gitlab["types"] == ("Issue", "Task")
    assert cfg.gitlab["confidential"] == "redact"
    assert cfg.store["synchronous"] == "NORMAL"
    assert cfg.worker["enabled"] is False
    assert cfg.worker["poll_interval"] == 1.5
    assert cfg.trello["api_url"] == "http://127.0.0.1:9000/1"


def test_every_problem_is_reported_together(tmp_path):
    """Unknown key and section, bad int, bool, list id and URL all appear in one ConfigError."""
    text = (
        "[server]\nmax_body_bytes = lots\ncolour = blue\n"
        "[wrker]\nenabled = true\n"
        "[worker]\nenabled = maybe\n"
        "[trello]\napi_url = ftp://trello.example.com\nlist_id = nothex\n"
        "[lists]\nbug = 123\n"
    )
    with pytest.raises(config.ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    expected = [
        "[server] colour: unknown key",
        "[wrker]: unknown section",
        "[server] max_body_bytes = 'lots': must be a number",
        "[worker] enabled = 'maybe': must be true or false",
        "[trello] list_id = 'nothex': must be a 24-character hex Trello id",
        "[lists] bug = '123': must be a 24-character hex Trello id",
        "[trello] api_url = 'ftp://trello.example.com': must be an http:// or https:// URL",
    ]
    for problem in expected:
        assert problem in message
    assert len(info.value.problems) == len(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nlog_level = loud\n", "[server] log_level = 'loud': must be one of"),
        ("[trello]\nread_timeout = -1\n", "[trello] read_timeout = '-1': must be a number >= 0"),
        ("[trello]\nread_timeout = nan\n", "[trello] read_timeout = 'nan': must be a number >= 0"),
        ("[store]\nbusy_timeout_ms = 1.5\n", "[store] busy_timeout_ms = '1.5': must be a number"),
        ("[gitlab]\nconfidential = show\n", "[gitlab] confidential = 'show': must be one of"),
    ],
)
def test_single_bad_value_is_named(tmp_path, text, problem):
    """Each bad value is reported with its section, key, value and what it must be."""
    assert problem in problems_of(tmp_path, text)


def test_missing_named_file_is_an_error(tmp_path):
    """A file named by GITLAB2TRELLO_CONFIG or by path that does not exist is a ConfigError."""
    missing = tmp_path / "missing.ini"
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(environ={"GITLAB2TRELLO_CONFIG": str(missing)})
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(missing, environ={})


def test_unparseable_file_is_an_error(tmp_path):
    """A file that is not INI (a key outside any section) is a ConfigError naming the file."""
    path = write(tmp_path, "key = value\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(environ={config.ENV_FILE: str(path)})
    assert str(path) in str(info.value)
    assert "section" in str(info.value)


def test_config_path_that_is_a_directory_is_an_error(tmp_path):
    """GITLAB2TRELLO_CONFIG naming a directory is a ConfigError, not an OSError."""
    with pytest.raises(config.ConfigError):
        config.load(environ={config.ENV_FILE: str(tmp_path)})


def test_relative_database_path_resolves_under_project(tmp_path):
    """A relative [store] database is taken from the project folder; an absolute one is kept."""
    cfg = load_text(tmp_path, "[store]\ndatabase = data/bridge.sqlite3\n")
    assert cfg.database == config.PROJECT_DIR / "data" / "bridge.sqlite3"
    assert cfg.database.is_absolute()
    absolute = tmp_path / "x.sqlite3"
    (tmp_path / "sub").mkdir()
    cfg = load_text(tmp_path / "sub", f"[store]\ndatabase = {absolute}\n")
    assert cfg.database == absolute


@pytest.mark.parametrize(
    ("key", "token", "list_id", "configured"),
    [
        ("k", "t", LIST_A, True),
        ("", "t", LIST_A, False),
        ("k", "", LIST_A, False),
        ("k", "t", "", False),
    ],
)
def test_trello_configured_needs_key_token_and_list(tmp_path, key, token, list_id, configured):
    """trello_configured is true only with a key, a token and a list."""
    cfg = load_text(tmp_path, f"[trello]\nkey = {key}\ntoken = {token}\nlist_id = {list_id}\n")
    assert cfg.trello_configured is configured


def test_trello_configured_with_project_list_only(tmp_path):
    """A project section with its own list stands in for the default list."""
    cfg = load_text(tmp_path, f"[trello]\nkey = k\ntoken = t\n[project:42]\nlist_id = {LIST_A}\n")
    assert cfg.trello_configured is True


ROUTED = f"""
[trello]
list_id = {LIST_A}
done_list_id = {DONE}

[lists]
Bug = {LIST_B}
Feature = {LIST_C}

[members]
lpark = lee.park

[project:42]
list_id = {LIST_C}

[project:42:lists]
docs = {LIST_D}

[project:acme/widget-api]
done_list_id = {LIST_B}

[project:acme/widget-api:members]
sokafor = sam.okafor
"""


def test_default_routing_from_lists_and_members(tmp_path):
    """[lists] (labels lower-cased) and [members] make the default routing."""
    cfg = load_text(tmp_path, ROUTED)
    routing = cfg.routing(7, "other/project")
    assert routing == cfg.default_routing
    assert routing.list_id == LIST_A
    assert routing.done_list_id == DONE
    assert dict(routing.lists) == {"bug": LIST_B, "feature": LIST_C}
    assert dict(routing.members) == {"lpark": "lee.park"}


def test_project_by_id_overrides_list_and_lists(tmp_path):
    """[project:42] and [project:42:lists] replace the list and label lists, keeping the rest."""
    cfg = load_text(tmp_path, ROUTED)
    routing = cfg.routing(42, None)
    assert routing.list_id == LIST_C
    assert routing.done_list_id == DONE
    assert dict(routing.lists) == {"docs": LIST_D}
    assert dict(routing.members) == {"lpark": "lee.park"}


def test_project_by_path_overrides_done_list_and_members(tmp_path):
    """[project:acme/widget-api] is found by path and inherits what it does not set."""
    cfg = load_text(tmp_path, ROUTED)
    routing = cfg.routing(7, "acme/widget-api")
    assert routing.list_id == LIST_A
    assert routing.done_list_id == LIST_B
    assert dict(routing.lists) == {"bug": LIST_B, "feature": LIST_C}
    assert dict(routing.members) == {"sokafor": "sam.okafor"}


def test_project_id_wins_over_path(tmp_path):
    """When both the id and the path have a section, the id's section is used."""
    cfg = load_text(tmp_path, ROUTED)
    assert cfg.routing(42, "acme/widget-api").list_id == LIST_C
    assert cfg.routing(None, "acme/widget-api").done_list_id == LIST_B
    assert cfg.routing(None, None) == cfg.default_routing


def test_project_section_problems_are_reported(tmp_path):
    """Unknown keys, bad ids and unknown sub-sections of a project are reported together."""
    message = problems_of(
        tmp_path,
        f"[project:42]\nlist_id = nope\ncolour = red\n"
        f"[project:42:labels]\nbug = {LIST_A}\n[project:42:lists]\nbug = short\n",
    )
    assert "[project:42] list_id = 'nope': must be a 24-character hex Trello id" in message
    assert "[project:42] colour: unknown key" in message
    assert "[project:42:labels]: unknown section" in message
    assert "[project:42:lists] bug = 'short'" in message


def test_scoped_label_can_be_mapped(tmp_path):
    """A scoped label like priority::high can be mapped to a list in [lists]."""
    cfg = load_text(tmp_path, f"[lists]\npriority::high = {LIST_B}\n")
    assert dict(cfg.default_routing.lists) == {"priority::high": LIST_B}


def test_config_error_lists_problems():
    """ConfigError keeps the problem list and writes each one on its own line."""
    error = config.ConfigError(["one", "two"])
    assert error.problems == ["one", "two"]
    assert str(error) == "invalid configuration:\n  - one\n  - two"


def test_database_url_selects_postgresql_and_hides_its_password(tmp_path):
    """A postgresql:// (or postgres://) URL selects PostgreSQL; shown without its password."""
    url = "postgresql://bridge:p%40ss-word@db.example.com:5433/gitlab2trello"
    cfg = load_text(tmp_path, f"[store]\ndatabase = {url}\n")
    assert cfg.postgresql and cfg.database_url == url
    assert cfg.database_label == "postgresql://bridge:***@db.example.com:5433/gitlab2trello"
    assert cfg.metrics_dir == config.PROJECT_DIR / "var" / "metrics"
    with pytest.raises(ValueError):
        cfg.database  # noqa: B018 - a URL is not a file
    short = load_text(tmp_path, "[store]\ndatabase = postgres://db.example.com/g2t\n")
    assert short.postgresql and short.database_label == "postgres://db.example.com/g2t"
    assert not load_text(tmp_path, "").postgresql


def test_bad_database_urls_are_refused(tmp_path):
    """Another scheme, a URL without a host, or a non-numeric port is a configuration error."""
    assert "postgresql://" in problems_of(tmp_path, "[store]\ndatabase = mysql://h/db\n")
    assert "must name a host" in problems_of(tmp_path, "[store]\ndatabase = postgresql:///db\n")
    assert "port" in problems_of(tmp_path, "[store]\ndatabase = postgresql://h:x/db\n")


def test_the_database_password_is_a_secret(tmp_path):
    """The URL's password, as written and decoded, is blanked in logs."""
    import observe

    url = "postgresql://bridge:p%40ss-word@db.example.com/g2t"
    secrets = observe.secrets_of(load_text(tmp_path, f"[store]\ndatabase = {url}\n"))
    assert "p%40ss-word" in secrets and "p@ss-word" in secrets


def test_instance_name_defaults_to_the_host_name(tmp_path):
    """[server] instance names the instance; without it, the host name does."""
    import socket

    assert load_text(tmp_path, "").instance == socket.gethostname()
    named = load_text(tmp_path, "", GITLAB2TRELLO_SERVER_INSTANCE="web-2")
    assert named.instance == "web-2"
