"""Reading ``config.ini`` plus environment overrides into one typed, validated object.

Every key lives in the table ``SCHEMA`` below: its section, its type and its default. The
file named by ``GITLAB2TRELLO_CONFIG`` (else ``config.ini`` beside this module) is read first,
then every ``GITLAB2TRELLO_<SECTION>_<KEY>`` variable overrides the key of that name. Unknown
keys and bad values are collected and reported together in one ``ConfigError``.

Sections whose keys are free-form: ``[lists]`` (GitLab label = Trello list id), ``[members]``
(GitLab username = Trello username), and per-project overrides ``[project:<id or path>]`` with the
keys ``list_id`` and ``done_list_id`` plus ``[project:<id or path>:lists]`` and
``[project:<id or path>:members]``.
"""

from __future__ import annotations

import configparser
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent
ENV_FILE = "GITLAB2TRELLO_CONFIG"
ENV_PREFIX = "GITLAB2TRELLO_"
TRELLO_ID = re.compile(r"^[0-9a-f]{24}$")


class ConfigError(Exception):
    """The configuration cannot be used; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


def _str(value: str) -> str:
    return value.strip()


def _int(value: str) -> int:
    return int(value.strip())


def _positive_int(value: str) -> int:
    number = int(value.strip())
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value.strip())
    if not number >= 0:
        raise ValueError("must be a number >= 0")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return lowered

    return parse


def _synchronous(value: str) -> str:
    return _choice("full", "normal", "extra")(value).upper()


def _trello_id_or_empty(value: str) -> str:
    value = value.strip()
    if value and not TRELLO_ID.match(value):
        raise ValueError("must be a 24-character hex Trello id")
    return value


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    if value and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _database(value: str) -> str:
    """A SQLite file path, or a ``postgresql://`` (``postgres://``) URL."""
    value = value.strip()
    if not value:
        raise ValueError("must be a file path or a postgresql:// URL")
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("a URL must start with postgresql:// or postgres://")
        parts = urllib.parse.urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError("the URL's port must be a number") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("the URL must name a host")
    return value


def is_postgresql(database: str) -> bool:
    """True when ``[store] database`` names a PostgreSQL database rather than a SQLite file."""
    return database.lower().startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


SYNC_BACK = ("lists", "members", "comments", "due")


def _sync_set(value: str) -> frozenset[str]:
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    unknown = sorted(names - set(SYNC_BACK))
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; choose from {', '.join(SYNC_BACK)}")
    return frozenset(names)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


# section -> key -> (parser, default as it would be written in the file)
SCHEMA: dict[str, dict[str, tuple[Callable[[str], Any], str]]] = {
    "server": {
        "max_body_bytes": (_positive_int, "4194304"),
        "log_level": (_choice("debug", "info", "warning", "error"), "info"),
        "instance": (_str, ""),
        "metrics_dir": (_str, ""),
    },
    "gitlab": {
        "secret_token": (_str, ""),
        "signing_token": (_str, ""),
        "signature_tolerance": (_positive_int, "300"),
        "confidential": (_choice("skip", "redact", "mirror"), "skip"),
        "types": (_csv, "Issue, Incident"),
        "url": (_url, ""),
        "private_token": (_str, ""),
        "projects": (_csv, ""),
        "reconcile_interval": (_non_negative_float, "300"),
        "default_project": (_str, ""),
        "merge_requests": (_bool, "false"),
    },
    "trello": {
        "api_url": (_url, "https://api.trello.com/1"),
        "key": (_str, ""),
        "token": (_str, ""),
        "list_id": (_trello_id_or_empty, ""),
        "done_list_id": (_trello_id_or_empty, ""),
        "review_list_id": (_trello_id_or_empty, ""),
        "connect_timeout": (_non_negative_float, "3.05"),
        "read_timeout": (_non_negative_float, "10"),
        "secret": (_str, ""),
        "max_requests_per_10s": (_positive_int, "90"),
        "concurrency": (_positive_int, "4"),
    },
    "store": {
        "database": (_database, "var/gitlab2trello.sqlite3"),
        "synchronous": (_synchronous, "full"),
        "busy_timeout_ms": (_positive_int, "10000"),
        "group_commit": (_bool, "true"),
        "pool_size": (_positive_int, "10"),
        "connect_timeout": (_non_negative_float, "3"),
        "statement_timeout_ms": (_positive_int, "5000"),
    },
    "twoway": {
        "enabled": (_bool, "false"),
        "callback_url": (_url, ""),
        "sync": (_sync_set, "lists, members, comments, due"),
        "create_issues": (_bool, "false"),
        "actions_interval": (_non_negative_float, "60"),
    },
    "worker": {
        "enabled": (_bool, "true"),
        "poll_interval": (_non_negative_float, "0.2"),
        "retry_initial_wait": (_non_negative_float, "1"),
        "retry_max_wait": (_non_negative_float, "300"),
        "give_up_after": (_non_negative_float, "259200"),
    },
}

FREE_SECTIONS = ("lists", "members")
PROJECT_KEYS = {"list_id": _trello_id_or_empty, "done_list_id": _trello_id_or_empty}


@dataclass(frozen=True)
class Routing:
    """Where one project's cards live and how its people map to Trello members."""

    list_id: str
    done_list_id: str
    lists: Mapping[str, str] = field(default_factory=dict)  # lower-cased GitLab label -> list id
    members: Mapping[str, str] = field(default_factory=dict)  # GitLab username -> Trello username


@dataclass(frozen=True)
class Config:
    """The whole validated configuration, one attribute per section."""

    path: Path | None
    server: Mapping[str, Any]
    gitlab: Mapping[str, Any]
    trello: Mapping[str, Any]
    store: Mapping[str, Any]
    worker: Mapping[str, Any]
    twoway: Mapping[str, Any]
    default_routing: Routing
    projects: Mapping[str, Routing]  # project id or path -> routing

    @property
    def trello_configured(self) -> bool:
        """True when the worker has what it needs to write cards."""
        t = self.trello
        return bool(t["key"] and t["token"] and (t["list_id"] or self.projects))

    def new_card_lists(self) -> dict[str, str]:
        """New-card list id -> the project (id or path) a card added there becomes an issue of:
        each ``[project:...] list_id``, and ``[trello] list_id`` for ``[gitlab] default_project``.
        """
        lists = {}
        if self.default_routing.list_id and self.gitlab["default_project"]:
            lists[self.default_routing.list_id] = self.gitlab["default_project"]
        for name, routing in self.projects.items():
            if routing.list_id and routing.list_id != self.default_routing.list_id:
                lists[routing.list_id] = name
        return lists

    def routings(self) -> list[Routing]:
        """The default routing and every project's."""
        return [self.default_routing, *self.projects.values()]

    @property
    def postgresql(self) -> bool:
        """True when the store is PostgreSQL, False for the SQLite file (the default)."""
        return is_postgresql(self.store["database"])

    @property
    def database(self) -> Path:
        """The SQLite file, relative paths taken from the project folder."""
        if self.postgresql:
            raise ValueError("[store] database is a PostgreSQL URL, not a file")
        path = Path(self.store["database"])
        return path if path.is_absolute() else PROJECT_DIR / path

    @property
    def database_url(self) -> str:
        """The PostgreSQL URL of ``[store] database`` (a secret when it carries a password)."""
        if not self.postgresql:
            raise ValueError("[store] database is a SQLite file, not a URL")
        return self.store["database"]

    @property
    def database_label(self) -> str:
        """What to show people and logs: the file, or the URL without its password."""
        return redact_url(self.database_url) if self.postgresql else str(self.database)

    @property
    def metrics_dir(self) -> Path:
        """The folder of the metrics files: ``[server] metrics_dir``, else ``metrics/`` beside
        the SQLite file, else ``var/metrics`` in the project folder."""
        if self.server["metrics_dir"]:
            path = Path(self.server["metrics_dir"])
            return path if path.is_absolute() else PROJECT_DIR / path
        return (
            PROJECT_DIR / "var" / "metrics" if self.postgresql else self.database.parent / "metrics"
        )

    @property
    def instance(self) -> str:
        """This instance's name (``[server] instance``, else the host name)."""
        return self.server["instance"] or socket.gethostname()

    def routing(self, project_id: int | None, project_path: str | None) -> Routing:
        """The routing for one project: its own section if it has one, else the defaults."""
        for name in (str(project_id) if project_id is not None else None, project_path):
            if name and name in self.projects:
                return self.projects[name]
        return self.default_routing


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The file to read: ``$GITLAB2TRELLO_CONFIG`` or ``config.ini`` beside this module."""
    environ = os.environ if environ is None else environ
    name = environ.get(ENV_FILE)
    return Path(name) if name else PROJECT_DIR / "config.ini"


def load(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> Config:
    """Read, override and validate; raise ``ConfigError`` listing every problem."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    # "=" only: scoped labels like "priority::high" are keys of [lists]
    parser = configparser.ConfigParser(
        interpolation=None, default_section="__none__", delimiters=("=",)
    )
    parser.optionxform = str  # keep label and user names as written
    file_path = Path(path) if path is not None else config_path(environ)
    if file_path.exists():
        try:
            with file_path.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (configparser.Error, UnicodeDecodeError, OSError) as exc:
            raise ConfigError([f"{file_path}: {exc}"]) from None
    elif path is not None or ENV_FILE in environ:
        raise ConfigError([f"{file_path}: no such file"])

    raw: dict[str, dict[str, str]] = {name: {} for name in SCHEMA}
    free: dict[str, dict[str, str]] = {}
    for section in parser.sections():
        values = dict(parser.items(section))
        if section in SCHEMA:
            for key, value in values.items():
                if key.lower() not in SCHEMA[section]:
                    problems.append(f"[{section}] {key}: unknown key")
                else:
                    raw[section][key.lower()] = value
        elif section in FREE_SECTIONS or section.startswith("project:"):
            free[section] = values
        else:
            problems.append(f"[{section}]: unknown section")

    for section, keys in SCHEMA.items():
        for key in keys:
            env_name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            if env_name in environ:
                raw[section][key] = environ[env_name]
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)

    typed: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        typed[section] = {}
        for key, (parse, default) in keys.items():
            text = raw[section].get(key, default)
            try:
                typed[section][key] = parse(text)
            except ValueError as exc:
                problems.append(f"[{section}] {key} = {text!r}: {_reason(exc)}")
                typed[section][key] = parse(default)

    default_routing = Routing(
        list_id=typed["trello"]["list_id"],
        done_list_id=typed["trello"]["done_list_id"],
        lists=_lists(free.get("lists", {}), "[lists]", problems),
        members=dict(free.get("members", {})),
    )
    projects = _projects(free, default_routing, problems)
    if typed["twoway"]["enabled"]:
        if not typed["trello"]["secret"]:
            problems.append(
                "[twoway] enabled needs [trello] secret (the API key's secret, which signs "
                "Trello's webhooks; GITLAB2TRELLO_TRELLO_SECRET)"
            )
        if not typed["twoway"]["callback_url"]:
            problems.append(
                "[twoway] enabled needs [twoway] callback_url (the public URL of POST /trello)"
            )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=file_path if file_path.exists() else None,
        server=typed["server"],
        gitlab=typed["gitlab"],
        trello=typed["trello"],
        store=typed["store"],
        worker=typed["worker"],
        twoway=typed["twoway"],
        default_routing=default_routing,
        projects=projects,
    )


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return "must be a number" if text.startswith(("invalid literal", "could not convert")) else text


def _lists(values: Mapping[str, str], where: str, problems: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for label, list_id in values.items():
        list_id = list_id.strip()
        if not TRELLO_ID.match(list_id):
            problems.append(f"{where} {label} = {list_id!r}: must be a 24-character hex Trello id")
        result[label.strip().lower()] = list_id
    return result


def _projects(
    free: Mapping[str, Mapping[str, str]], default: Routing, problems: list[str]
) -> dict[str, Routing]:
    projects: dict[str, Routing] = {}
    names = {s.split(":")[1] for s in free if s.startswith("project:") and s.count(":") >= 1}
    for name in sorted(names):
        base = f"project:{name}"
        values = free.get(base, {})
        fields: dict[str, str] = {"list_id": default.list_id, "done_list_id": default.done_list_id}
        for key, value in values.items():
            if key not in PROJECT_KEYS:
                problems.append(f"[{base}] {key}: unknown key")
                continue
            try:
                fields[key] = PROJECT_KEYS[key](value)
            except ValueError as exc:
                problems.append(f"[{base}] {key} = {value!r}: {exc}")
        for section in free:
            if section.startswith(base + ":") and section[len(base) + 1 :] not in FREE_SECTIONS:
                problems.append(f"[{section}]: unknown section")
        lists = free.get(f"{base}:lists")
        members = free.get(f"{base}:members")
        projects[name] = Routing(
            list_id=fields["list_id"],
            done_list_id=fields["done_list_id"],
            lists=_lists(lists, f"[{base}:lists]", problems)
            if lists is not None
            else default.lists,
            members=dict(members) if members is not None else default.members,
        )
    return projects
