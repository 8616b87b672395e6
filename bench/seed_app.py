"""The 2015 design, kept as a baseline: the request itself writes the Trello card and waits.

This is what the original write-up did (Bottle, ``POST /issue``, ``requests`` to Trello with
key and token, answer "OK"), with today's payload and a timeout so that nothing hangs. Trello's
answer is not looked at, as then: a refused call still answers "OK". Run under uWSGI by
``bench/seed.py``; configured by ``SEED_TRELLO_API``, ``SEED_TRELLO_KEY``,
``SEED_TRELLO_TOKEN`` and ``SEED_LIST_ID``.
"""

from __future__ import annotations

import os

import requests
from bottle import Bottle, request, template

API = os.environ.get("SEED_TRELLO_API", "http://127.0.0.1:9/1")
KEY = os.environ.get("SEED_TRELLO_KEY", "")
TOKEN = os.environ.get("SEED_TRELLO_TOKEN", "")
LIST_ID = os.environ.get("SEED_LIST_ID", "")
DESC = "GitLab issue {iid}: {url}"

application = Bottle()


def write_card_to_list(name: str, desc: str) -> None:
    requests.post(
        f"{API}/cards",
        data={"key": KEY, "token": TOKEN, "idList": LIST_ID, "name": name, "desc": desc},
        timeout=10,
    )


@application.route("/hello/<name>")
def index(name: str) -> str:
    return template("<b>Hello {{name}}</b>!", name=name)


@application.post("/issue")
def issue() -> str:
    attrs = request.json["object_attributes"]
    if attrs["action"] == "open":
        write_card_to_list(
            f"[ ISSUE {attrs['iid']} ] {attrs['title']}",
            DESC.format(iid=attrs["iid"], url=attrs["url"]),
        )
    return "OK"
