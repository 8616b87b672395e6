"""Unit tests of sync.py: card rendering, routing rules and the plan of Trello calls."""

import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sync
from config import Routing
from events import IssueEvent, Label

URL = "https://gitlab.example.com/acme/widget-api/-/issues/23"
PROJECT_URL = "https://gitlab.example.com/acme/widget-api"
TODO = "a" * 24
DONE = "d" * 24
BUGS = "b" * 24
URGENT = "c" * 24
LABEL_IDS = {"bug": "L" * 24, "docs": "M" * 24, "ux": "N" * 24}
MEMBER_IDS = {"lee.park": "P" * 24, "sokafor": "Q" * 24, "ann": "R" * 24}
RAW_MENTION = re.compile(r"@\w")


def event(**changes: Any) -> IssueEvent:
    base = IssueEvent(
        instance="https://gitlab.example.com",
        project_id=42,
        iid=23,
        title="New API: create/update/delete file",
        url=URL,
        action="open",
        state="opened",
        updated_at=1_700_000_000.0,
        description="Create new API for manipulations with repository",
        project_path="acme/widget-api",
        project_url=PROJECT_URL,
    )
    return replace(base, **changes)


def routing(**changes: Any) -> Routing:
    base = Routing(list_id=TODO, done_list_id="", lists={}, members={})
    return replace(base, **changes)


# ---------------------------------------------------------------------------- names


def test_card_name_format():
    """The card name is `[ ISSUE <iid> ] <title>`."""
    assert sync.card_name(23, "New API: create/update/delete file") == (
        "[ ISSUE 23 ] New API: create/update/delete file"
    )


def test_card_name_collapses_whitespace():
    """Runs of whitespace and newlines in the title become single spaces."""
    assert sync.card_name(5, "  two\n\nlines\tand  tabs ") == "[ ISSUE 5 ] two lines and tabs"


def test_card_name_truncated_to_limit_with_note():
    """A title too long for Trello is cut to 16384 characters ending with a truncation note."""
    name = sync.card_name(7, "x" * 20_000)
    assert len(name) == sync.MAX_TEXT == 16384
    assert name.startswith("[ ISSUE 7 ] xxx")
    assert name.endswith(" ... (truncated)")


def test_card_name_exactly_at_limit_is_kept():
    """A name of exactly 16384 characters is not truncated."""
    prefix = "[ ISSUE 7 ] "
    title = "y" * (sync.MAX_TEXT - len(prefix))
    assert sync.card_name(7, title) == prefix + title


def test_card_name_neutralises_mentions():
    """A title's @mentions reach the card name with no `@` directly before a word character."""
    name = sync.card_name(1, "@lpark please review")
    assert RAW_MENTION.search(name) is None


# ---------------------------------------------------------------------------- descriptions


def test_card_desc_starts_with_issue_url():
    """The description starts with the issue URL, then a blank line and the issue's text."""
    desc = sync.card_desc(event())
    assert desc == URL + "\n\nCreate new API for manipulations with repository"


def test_card_desc_without_description_is_the_url():
    """An issue with no description gets only its URL."""
    assert sync.card_desc(event(description="")) == URL
    assert sync.card_desc(event(description="  \n ")) == URL


def test_card_desc_makes_markdown_upload_links_absolute():
    """A markdown link to /uploads/... points at the project's uploads."""
    desc = sync.card_desc(event(description="See ![shot](/uploads/abc123/shot.png) here."))
    assert f"![shot]({PROJECT_URL}/uploads/abc123/shot.png)" in desc
    assert "(/uploads/" not in desc


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<img src="/uploads/def/x.png">', f'<img src="{PROJECT_URL}/uploads/def/x.png">'),
        ("<img src='/uploads/def/x.png'>", f"<img src='{PROJECT_URL}/uploads/def/x.png'>"),
        ("<img src=/uploads/def/x.png>", f"<img src={PROJECT_URL}/uploads/def/x.png>"),
    ],
)
def test_card_desc_makes_img_upload_links_absolute(html, expected):
    """An <img src=...> pointing at /uploads/... is made absolute, quoted or not."""
    desc = sync.card_desc(event(description=html))
    assert expected in desc


def test_card_desc_keeps_absolute_links():
    """Links that are already absolute are left as they are."""
    text = "[f](https://cdn.example.com/uploads/a.png)"
    assert sync.card_desc(event(description=text)).endswith(text)


def test_card_desc_neutralises_mentions():
    """No `@` followed by a word character remains; the names themselves stay readable."""
    text = "ping @lpark and @team.lead, cc @sokafor-2 (mail a@b.example)"
    desc = sync.card_desc(event(description=text))
    assert RAW_MENTION.search(desc) is None
    assert "@" + sync.ZWSP + "lpark" in desc
    assert desc.replace(sync.ZWSP, "").endswith(text)


def test_card_desc_lists_unmapped_assignees_without_mentioning_them():
    """Assignees with no Trello member are named in the description, neutralised."""
    desc = sync.card_desc(event(), ["lpark"])
    assert "Assigned in GitLab (no Trello member): @" + sync.ZWSP + "lpark" in desc
    assert RAW_MENTION.search(desc) is None
    assert desc.startswith(URL + "\n\n")


def test_card_desc_notes_a_moved_issue():
    """A moved issue's description says where it went."""
    desc = sync.card_desc(event(moved_to_id=991))
    assert "new issue id 991" in desc


def test_card_desc_truncated_with_url_at_end():
    """A description over 16384 characters is cut to 16384, saying so, with the URL last."""
    desc = sync.card_desc(event(description="y" * 20_000))
    assert len(desc) == 16384
    assert desc.startswith(URL)
    assert "truncated" in desc
    assert desc.endswith(URL)


def test_truncate_leaves_short_text_alone():
    """Text within the limit is returned unchanged."""
    assert sync.truncate("short", URL) == "short"


# an issue of GitLab 6.4 to 7.3: its payload carries neither its URL nor its project's
NO_LINK_URL = "urn:gitlab2trello:no-link:gitlab|14|23"


def test_issue_link_is_none_without_an_http_url():
    """An issue whose url is not an http(s) URL has no link; one with an http(s) URL has it."""
    assert sync.issue_link(event(url=NO_LINK_URL)) is None
    assert sync.issue_link(event()) == URL
    assert sync.issue_link(event(url="http://example.com/diaspora/issues/23")) is not None


def test_card_desc_without_link_is_the_issue_text():
    """An issue with no link gets a description of its own text only, nothing made up."""
    ev = event(url=NO_LINK_URL, project_url=None)
    assert sync.card_desc(ev) == "Create new API for manipulations with repository"
    assert sync.card_desc(replace(ev, description="")) == ""
    assert sync.card_desc(replace(ev, description="see /uploads/x.png")) == "see /uploads/x.png"
    assert sync.card_desc(ev, ["ann"]).startswith("Assigned in GitLab (no Trello member): @")


def test_card_desc_without_link_truncated_says_so():
    """A long description of an issue with no link is cut, saying so, without a URL."""
    desc = sync.card_desc(event(url=NO_LINK_URL, description="y" * 20_000))
    assert len(desc) == 16384
    assert desc.endswith("\n\n... truncated")
    assert "urn:" not in desc


def test_card_without_link_has_the_usual_name():
    """The card of an issue with no link keeps the [ ISSUE <iid> ] <title> name."""
    spec = sync.desired_card(event(url=NO_LINK_URL), routing())
    assert spec is not None
    assert spec.name == "[ ISSUE 23 ] New API: create/update/delete file"
    assert not spec.desc.startswith("urn:")


def test_redacted_card_without_link_keeps_only_the_notice():
    """A confidential issue with no link, under redact, shows only the confidentiality notice."""
    spec = sync.desired_card(event(url=NO_LINK_URL, confidential=True), routing(), "redact")
    assert spec is not None
    assert spec.desc == "Confidential issue: open it in GitLab to read it."
    assert sync.truncate("z" * 16384, URL) == "z" * 16384


# ---------------------------------------------------------------------------- properties


texts = st.text(
    alphabet=st.sampled_from(["@", "a", "Z", "9", "_", ".", "-", " ", "\n", "é", "/", "ü", "("])
    | st.characters(),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(title=texts, description=texts, repeat=st.sampled_from([1, 60]))
def test_rendered_text_within_limit_and_without_raw_mentions(title, description, repeat):
    """For any title and description, name and desc fit in 16384 and desc has no raw @mention."""
    ev = event(title=title * repeat, description=description * repeat)
    name = sync.card_name(ev.iid, ev.title)
    desc = sync.card_desc(ev)
    assert len(name) <= sync.MAX_TEXT
    assert len(desc) <= sync.MAX_TEXT
    assert RAW_MENTION.search(desc) is None
    assert desc.startswith(URL)


@settings(max_examples=150, deadline=None)
@given(text=texts, repeat=st.sampled_from([1, 80]))
def test_neutralise_mentions_leaves_no_raw_mention(text, repeat):
    """neutralise_mentions leaves no `@` directly before a word character and only adds ZWSPs."""
    source = text * repeat
    out = sync.neutralise_mentions(source)
    assert RAW_MENTION.search(out) is None
    assert out.replace(sync.ZWSP, "") == source.replace(sync.ZWSP, "")


# ---------------------------------------------------------------------------- desired card


def test_desired_card_for_open_issue():
    """An open issue gets its name, description, default list, labels, members and due date."""
    ev = event(
        labels=(Label("bug", "#d9534f"), Label("Bug"), Label("docs")),
        assignees=("lpark", "sokafor"),
        due_date="2026-06-30",
    )
    spec = sync.desired_card(ev, routing(members={"lpark": "lee.park"}))
    assert spec == sync.CardSpec(
        name="[ ISSUE 23 ] New API: create/update/delete file",
        desc=sync.card_desc(ev),
        list_id=TODO,
        closed=False,
        due="2026-06-30",
        labels=(Label("bug", "#d9534f"), Label("docs")),
        members=("lee.park", "sokafor"),
    )


def test_confidential_skip_gives_no_card():
    """With the skip policy a confidential issue has no card."""
    assert sync.desired_card(event(confidential=True), routing(), "skip") is None


def test_confidential_redact_gives_link_only_card():
    """With the redact policy the card is named (confidential) and carries only the link."""
    ev = event(
        confidential=True,
        title="Session token leaks",
        description="secret details",
        labels=(Label("security"),),
        assignees=("ann",),
        due_date="2026-06-30",
    )
    spec = sync.desired_card(ev, routing(), "redact")
    assert spec is not None
    assert spec.name == "[ ISSUE 23 ] (confidential)"
    assert spec.desc.startswith(URL)
    assert "Session token" not in spec.desc
    assert "secret details" not in spec.desc
    assert spec.labels == ()
    assert spec.members == ()
    assert spec.due is None
    assert spec.list_id == TODO


def test_confidential_mirror_gives_normal_card():
    """With the mirror policy a confidential issue gets the same card as any other."""
    ev = event(confidential=True)
    spec = sync.desired_card(ev, routing(), "mirror")
    assert spec is not None
    assert spec.name == "[ ISSUE 23 ] New API: create/update/delete file"
    assert spec.desc == sync.card_desc(ev)


def test_closed_issue_goes_to_done_list():
    """A closed issue's card moves to the done list and stays visible."""
    spec = sync.desired_card(event(state="closed"), routing(done_list_id=DONE))
    assert spec is not None
    assert spec.list_id == DONE
    assert spec.closed is False


def test_closed_issue_without_done_list_is_archived():
    """Without a done list a closed issue's card is archived."""
    spec = sync.desired_card(event(state="closed"), routing())
    assert spec is not None
    assert spec.closed is True


def test_closing_without_done_list_archives_in_place():
    """Closing an issue with no done list archives its card without moving it."""
    route = routing(lists={"bug": BUGS})
    ev = event(labels=(Label("bug"),))
    open_spec = sync.desired_card(ev, route)
    assert open_spec is not None and open_spec.list_id == BUGS
    applied = sync.applied_state(open_spec, LABEL_IDS, MEMBER_IDS)
    closed_spec = sync.desired_card(replace(ev, state="closed", action="close"), route)
    assert closed_spec is not None
    assert sync.plan(closed_spec, applied, LABEL_IDS, MEMBER_IDS) == [
        sync.Op("update", {"closed": True})
    ]


# ---------------------------------------------------------------------------- target list


def test_target_list_closed():
    """Closed issues go to the done list, or None (archive) when there is none."""
    closed = event(state="closed", labels=(Label("bug"),))
    assert sync.target_list(closed, routing(done_list_id=DONE, lists={"bug": BUGS})) == DONE
    assert sync.target_list(closed, routing(lists={"bug": BUGS})) is None


def test_target_list_first_configured_label_wins():
    """Among the issue's labels, the one configured first decides the list, case-insensitively."""
    route = routing(lists={"urgent": URGENT, "bug": BUGS})
    ev = event(labels=(Label("BUG"), Label("Urgent")))
    assert sync.target_list(ev, route) == URGENT
    assert sync.target_list(event(labels=(Label("Bug"),)), route) == BUGS


def test_target_list_default_without_mapped_label():
    """An issue with no mapped label goes to the default list, or None if there is none."""
    ev = event(labels=(Label("docs"),))
    assert sync.target_list(ev, routing(lists={"bug": BUGS})) == TODO
    assert sync.target_list(ev, routing(list_id="")) is None


# ---------------------------------------------------------------------------- plan


def spec_of(**changes: Any) -> sync.CardSpec:
    base = sync.CardSpec(name="[ ISSUE 23 ] t", desc=URL, list_id=TODO, closed=False)
    return replace(base, **changes)


def test_plan_without_card_creates_one():
    """With no card yet, the plan is one create carrying list, name, desc and position."""
    ops = sync.plan(spec_of(), None, LABEL_IDS, MEMBER_IDS)
    assert ops == [
        sync.Op("create", {"idList": TODO, "name": "[ ISSUE 23 ] t", "desc": URL, "pos": "bottom"})
    ]


def test_plan_create_carries_labels_members_and_due():
    """The create carries due, idLabels and idMembers as comma lists when wanted."""
    spec = spec_of(
        due="2026-06-30",
        labels=(Label("bug"), Label("Docs")),
        members=("lee.park", "Ann"),
    )
    (op,) = sync.plan(spec, None, LABEL_IDS, MEMBER_IDS)
    assert op.kind == "create"
    assert op.fields["due"] == "2026-06-30"
    assert op.fields["idLabels"] == f"{LABEL_IDS['bug']},{LABEL_IDS['docs']}"
    assert op.fields["idMembers"] == f"{MEMBER_IDS['lee.park']},{MEMBER_IDS['ann']}"


def test_plan_closed_without_done_list_and_card_does_nothing():
    """A closed issue with no done list and no card needs no call at all."""
    spec = sync.desired_card(event(state="closed"), routing())
    assert spec is not None
    assert sync.plan(spec, None, LABEL_IDS, MEMBER_IDS) == []


def test_plan_unchanged_card_does_nothing():
    """When the card already looks like the spec, the plan is empty."""
    spec = spec_of(due="2026-06-30", labels=(Label("bug"),), members=("ann",))
    applied = sync.applied_state(spec, LABEL_IDS, MEMBER_IDS)
    assert sync.plan(spec, applied, LABEL_IDS, MEMBER_IDS) == []


def test_plan_folds_field_changes_into_one_update():
    """Name, desc, list, archive and due changes go into a single update."""
    before = spec_of(closed=True)
    after = spec_of(
        name="[ ISSUE 23 ] new", desc=URL + "\n\nx", list_id=DONE, closed=False, due="2026-07-01"
    )
    applied = sync.applied_state(before, LABEL_IDS, MEMBER_IDS)
    assert sync.plan(after, applied, LABEL_IDS, MEMBER_IDS) == [
        sync.Op(
            "update",
            {
                "name": "[ ISSUE 23 ] new",
                "desc": URL + "\n\nx",
                "idList": DONE,
                "closed": False,
                "due": "2026-07-01",
            },
        )
    ]


def test_plan_update_only_names_changed_fields():
    """An update carries only the fields that changed; removing a due date sends due None."""
    applied = sync.applied_state(spec_of(due="2026-06-30"), LABEL_IDS, MEMBER_IDS)
    assert sync.plan(spec_of(), applied, LABEL_IDS, MEMBER_IDS) == [
        sync.Op("update", {"due": None})
    ]


def test_plan_adds_and_removes_labels_and_members():
    """Labels and members are added and removed one call each; unchanged ones are left alone."""
    before = spec_of(labels=(Label("bug"), Label("docs")), members=("ann", "sokafor"))
    after = spec_of(labels=(Label("bug"), Label("ux")), members=("ann", "lee.park"))
    applied = sync.applied_state(before, LABEL_IDS, MEMBER_IDS)
    ops = sync.plan(after, applied, LABEL_IDS, MEMBER_IDS)
    assert ops == [
        sync.Op("add_label", {"value": LABEL_IDS["ux"]}),
        sync.Op("remove_label", {"id": LABEL_IDS["docs"]}),
        sync.Op("add_member", {"value": MEMBER_IDS["lee.park"]}),
        sync.Op("remove_member", {"id": MEMBER_IDS["sokafor"]}),
    ]


HAND = "H" * 24  # a label a person put on the card


def known_card(spec: sync.CardSpec, *extra_labels: str) -> dict[str, Any]:
    """The applied state of ``spec``, with what the card shows known: its labels plus extra."""
    applied = sync.applied_state(spec, LABEL_IDS, MEMBER_IDS)
    applied["card_labels"] = [*applied["labels"].values(), *extra_labels]
    applied["card_members"] = list(applied["members"].values())
    return applied


def test_plan_replaces_known_sets_in_the_one_update_keeping_hand_labels():
    """With the card's sets known, a label and member swap rides in the one update as whole
    sets: the bridge's changes made to what the card shows, the hand label kept."""
    before = spec_of(labels=(Label("bug"), Label("docs")), members=("ann", "sokafor"))
    after = spec_of(
        name="[ ISSUE 23 ] new", labels=(Label("bug"), Label("ux")), members=("ann", "lee.park")
    )
    applied = known_card(before, HAND)
    ops = sync.plan(after, applied, LABEL_IDS, MEMBER_IDS, replace={"labels", "members"})
    assert ops == [
        sync.Op(
            "update",
            {
                "name": "[ ISSUE 23 ] new",
                "idLabels": f"{LABEL_IDS['bug']},{HAND},{LABEL_IDS['ux']}",
                "idMembers": f"{MEMBER_IDS['ann']},{MEMBER_IDS['lee.park']}",
            },
        )
    ]


def test_plan_adds_and_removes_one_by_one_when_the_set_is_not_known_or_not_replaced():
    """Without the card's set (no two-way view), or with the set not named in replace, the
    safe way stays: one call per label or member."""
    before = spec_of(labels=(Label("bug"),), members=("ann",))
    after = spec_of(labels=(Label("ux"),), members=("lee.park",))
    unknown = sync.applied_state(before, LABEL_IDS, MEMBER_IDS)
    assert [op.kind for op in sync.plan(after, unknown, LABEL_IDS, MEMBER_IDS, {"labels"})] == [
        "add_label",
        "remove_label",
        "add_member",
        "remove_member",
    ]
    ops = sync.plan(after, known_card(before, HAND), LABEL_IDS, MEMBER_IDS, replace={"labels"})
    assert ops == [
        sync.Op("update", {"idLabels": f"{HAND},{LABEL_IDS['ux']}"}),
        sync.Op("add_member", {"value": MEMBER_IDS["lee.park"]}),
        sync.Op("remove_member", {"id": MEMBER_IDS["ann"]}),
    ]


def test_plan_sends_no_set_when_the_bridge_changes_nothing_in_it():
    """Labels unchanged on GitLab's side: no idLabels, even if the card carries hand labels."""
    spec = spec_of(labels=(Label("bug"),))
    applied = known_card(spec, HAND)
    ops = sync.plan(replace_name(spec), applied, LABEL_IDS, MEMBER_IDS, {"labels", "members"})
    assert ops == [sync.Op("update", {"name": "[ ISSUE 23 ] renamed"})]


def replace_name(spec: sync.CardSpec) -> sync.CardSpec:
    return replace(spec, name="[ ISSUE 23 ] renamed")


def test_plan_removing_the_last_label_sends_an_empty_set():
    """The last of the bridge's labels removed, nothing by hand: idLabels is the empty list."""
    applied = known_card(spec_of(labels=(Label("bug"),)))
    assert sync.plan(spec_of(), applied, LABEL_IDS, MEMBER_IDS, {"labels"}) == [
        sync.Op("update", {"idLabels": ""})
    ]


def test_card_view_takes_the_sets_from_trellos_answer_and_notes_a_replace():
    """The card Trello answers is the truth for both sets; a replace is written down with
    Trello's time and what it added and removed from the set the bridge knew."""
    view = {"card_labels": [LABEL_IDS["bug"], HAND], "card_members": []}
    op = sync.Op("update", {"idLabels": f"{HAND},{LABEL_IDS['ux']}"})
    answer = {
        "idLabels": [HAND, LABEL_IDS["ux"]],
        "idMembers": [MEMBER_IDS["ann"]],
        "dateLastActivity": "2026-06-30T12:00:00.500Z",
    }
    after = sync.card_view(view, op, answer, now=1.0)
    assert after["card_labels"] == [HAND, LABEL_IDS["ux"]]
    assert after["card_members"] == [MEMBER_IDS["ann"]]
    assert after["written"] == {
        "labels": {
            "at": 1_782_820_800.5,
            "sent": [HAND, LABEL_IDS["ux"]],
            "added": [LABEL_IDS["ux"]],
            "removed": [LABEL_IDS["bug"]],
        }
    }
    added = sync.card_view(after, sync.Op("add_label", {"value": "Z" * 24}), True, now=2.0)
    assert added["card_labels"] == [HAND, LABEL_IDS["ux"], "Z" * 24]
    removed = sync.card_view(added, sync.Op("remove_label", {"id": HAND}), True, now=3.0)
    assert removed["card_labels"] == [LABEL_IDS["ux"], "Z" * 24]
    assert sync.card_view({}, op, answer, now=4.0).get("written") is None  # nothing known


def test_plan_reopen_unarchives():
    """Reopening an archived card sends closed False."""
    applied = sync.applied_state(spec_of(closed=True), LABEL_IDS, MEMBER_IDS)
    assert sync.plan(spec_of(), applied, LABEL_IDS, MEMBER_IDS) == [
        sync.Op("update", {"closed": False})
    ]


def test_applied_state_records_what_was_written():
    """applied_state writes down fields and the ids of labels and members by lower-cased name."""
    spec = spec_of(due="2026-06-30", labels=(Label("Bug"),), members=("Ann",))
    assert sync.applied_state(spec, LABEL_IDS, MEMBER_IDS) == {
        "name": spec.name,
        "desc": spec.desc,
        "list": TODO,
        "closed": False,
        "due": "2026-06-30",
        "labels": {"bug": LABEL_IDS["bug"]},
        "members": {"ann": MEMBER_IDS["ann"]},
    }


def test_with_unmapped_moves_unknown_assignees_to_description():
    """Assignees without a Trello member leave the member set and are listed in the desc."""
    ev = event(assignees=("lpark", "ghost"))
    route = routing(members={"lpark": "lee.park"})
    spec = sync.desired_card(ev, route)
    assert spec is not None
    result = sync.with_unmapped(ev, spec, route, {"lee.park"})
    assert result.members == ("lee.park",)
    assert "@" + sync.ZWSP + "ghost" in result.desc
    assert sync.with_unmapped(ev, spec, route, {"lee.park", "ghost"}) == spec


# ---------------------------------------------------------------------------- colours and urls


@pytest.mark.parametrize(
    ("gitlab_color", "trello_color"),
    [
        ("#d9534f", "red"),
        ("#dc143c", "red"),
        ("#ff0000", "red"),
        ("#cd5b45", "red"),
        ("#009966", "green"),
        ("#00b140", "green"),
        ("#3cb371", "green"),
        ("#428bca", "blue"),
        ("#1f75cb", "blue"),
        ("#0000ff", "blue"),
        ("#1068BF", "blue"),
        (" 1068bf ", "blue"),
        ("#808080", "black"),
    ],
)
def test_nearest_color_maps_gitlab_colours(gitlab_color, trello_color):
    """GitLab's reds, greens, blues and greys map to Trello's red, green, blue and black."""
    assert sync.nearest_color(gitlab_color) == trello_color


@pytest.mark.parametrize(
    "garbage", [None, "", "red", "#12345", "#1234567", "#gggggg", "rgb(1,2,3)", "##123456"]
)
def test_nearest_color_garbage_is_none(garbage):
    """Anything that is not #rrggbb gives None."""
    assert sync.nearest_color(garbage) is None


def test_issue_urls_finds_issue_links():
    """issue_urls finds every GitLab issue URL in a description, stopping at link delimiters."""
    text = f"{URL}\n\nsee [other](https://gitlab.example.com/a/b/issues/7) and <{URL}>"
    assert sync.issue_urls(text) == [URL, "https://gitlab.example.com/a/b/issues/7", URL]


def test_issue_urls_does_not_match_prefix_of_longer_number():
    """`.../issues/1` is not found inside `.../issues/11`."""
    one = "https://gitlab.example.com/acme/widget-api/-/issues/1"
    found = sync.issue_urls(one + "1\n\nbody")
    assert one not in found
    assert found == [one + "1"]
    assert sync.issue_urls("no links here") == []


def test_found_state_reads_a_card():
    """A card found on the board is read as if the bridge had written it."""
    card = {
        "name": "n",
        "desc": URL,
        "idList": TODO,
        "closed": False,
        "due": "2026-06-30T12:00:00.000Z",
        "idLabels": ["x1", "x2"],
    }
    assert sync.found_state(card, {"x1": "bug"}) == {
        "name": "n",
        "desc": URL,
        "list": TODO,
        "closed": False,
        "due": "2026-06-30",
        "labels": {"bug": "x1"},
        "members": {},
        "card_labels": ["x1", "x2"],
        "card_members": [],
    }
