# One permission check for every form a request can take. A request can arrive as a plain text
# line, a quoted text line, JSON with "cmd", JSON with "argv", or as the command a `watch` runs;
# each form must get the same verdict for the same connection and command. They used to disagree:
# a `pre_auth` command registered above `user` level ran from a plain text line on a user-level
# connection (the fast path's single "gate" comparison let any pre_auth command through), while
# the same request as JSON or quoted was refused.
from __future__ import annotations

import json

import pytest

from conftest import RawClient

FORMS = {
    "text": lambda name: f"{name}\n",
    "quoted": lambda name: f"'{name}'\n",
    "json cmd": lambda name: json.dumps({"id": 7, "cmd": name}) + "\n",
    "json argv": lambda name: json.dumps({"id": 7, "argv": [name]}) + "\n",
}


def _reply(client: RawClient, request: str) -> str:
    (line,) = client.request(request.rstrip("\n"))
    if line.startswith("{"):
        message = json.loads(line)
        return "OK " + str(message["result"]) if message["ok"] else "ERR " + message["error"]["message"]
    return line


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_pre_auth_command_above_user_level_is_refused_to_a_user_in_every_form(make_server, form):
    server = make_server("127.0.0.1", level="user")
    server.registry.add("peek", lambda: "the secret", pre_auth=True, level="admin")
    client = RawClient(server)
    for _ in range(3):  # the first time, and again once anything could have cached the line
        assert _reply(client, FORMS[form]("peek")) == "ERR permission denied: 'peek' needs admin"
    client.close()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_pre_auth_command_at_the_connection_level_runs_before_auth_in_every_form(make_server, form):
    server = make_server("127.0.0.1", level="operator", token="s3cret")
    server.registry.add("hello", lambda: "hi", pre_auth=True, level="operator")
    server.add_command("private", lambda: "no", level="user")
    client = RawClient(server)
    for _ in range(2):
        assert _reply(client, FORMS[form]("hello")) in ("hi", "OK hi")
        assert _reply(client, FORMS[form]("private")) == "ERR authentication required (send 'auth TOKEN')"
    client.close()


def test_watch_applies_the_same_check(make_server):
    server = make_server("127.0.0.1", level="user")
    server.registry.add("peek", lambda: "the secret", pre_auth=True, level="admin")
    client = RawClient(server)
    assert client.request("watch 1 peek") == ["ERR permission denied: 'peek' needs admin"]
    client.close()


def test_lowering_the_level_applies_to_a_line_already_run(make_server):
    server = make_server("127.0.0.1", level="admin")
    server.registry.add("peek", lambda: "the secret", pre_auth=True, level="admin")
    client = RawClient(server)
    assert client.request("peek") == ["the secret"]
    assert client.request("level user") == ["user"]
    assert client.request("peek") == ["ERR permission denied: 'peek' needs admin"]
    client.close()
