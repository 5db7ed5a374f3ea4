"""Tests of NPC file loading and validation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from npc_server.backends.scripted import ScriptedBackend
from npc_server.npcs import (
    ActionSpec,
    BusyPolicy,
    NpcConfigError,
    RoomInterrupt,
    load_npc_file,
    load_npcs,
    parse_npc,
)
from tests.support.server import DEMO_NPCS

DEMO_DIR = DEMO_NPCS

GOOD = """\
id = "mira"
name = "Mira the Merchant"
persona = "A shrewd but warm merchant."
greeting = "Welcome, traveller!"
busy = "queue"
interruptible = false
room_interrupt = "anyone"
max_queue = 5
memory_chars = 1000

[[actions]]
name = "open_shop"
description = "Open the shop window"
approval = true
timeout_s = 12.5

[[actions]]
name = "give_item"
parameters = { type = "object" }

[backend]
kind = "scripted"
first_token_ms = 0
fallback = ["Eh?"]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_loads_every_field(tmp_path: Path) -> None:
    """A complete file fills every field, with enums and typed actions."""
    npc = load_npc_file(write(tmp_path, "mira.toml", GOOD))
    assert (npc.id, npc.name, npc.greeting) == ("mira", "Mira the Merchant", "Welcome, traveller!")
    assert npc.persona == "A shrewd but warm merchant."
    assert npc.busy is BusyPolicy.QUEUE
    assert npc.room_interrupt is RoomInterrupt.ANYONE
    assert (npc.interruptible, npc.max_queue, npc.memory_chars) == (False, 5, 1000)
    assert npc.actions[0] == ActionSpec("open_shop", "Open the shop window", True, 12.5)
    assert npc.action("give_item") == ActionSpec("give_item", parameters={"type": "object"})
    assert npc.action("fly") is None


def test_backend_table_splits_kind_from_settings(tmp_path: Path) -> None:
    """`[backend] kind` picks the backend; the other keys become its settings."""
    npc = load_npc_file(write(tmp_path, "mira.toml", GOOD))
    assert npc.backend == "scripted"
    assert npc.backend_settings == {"first_token_ms": 0, "fallback": ["Eh?"]}


def test_minimal_file_gets_defaults() -> None:
    """Only id and name are required; the rest take documented defaults."""
    npc = parse_npc({"id": "bob", "name": "Bob"})
    assert npc.busy is BusyPolicy.INTERRUPT
    assert npc.room_interrupt is RoomInterrupt.SPEAKER
    assert (npc.interruptible, npc.max_queue, npc.memory_chars) == (True, 3, 6000)
    assert (npc.actions, npc.backend, dict(npc.backend_settings)) == ((), "scripted", {})


@pytest.mark.parametrize("key", ["id", "name"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    """A file without id or name fails, naming the file and the key."""
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(f"{key} ="))
    path = write(tmp_path, "mira.toml", text)
    with pytest.raises(NpcConfigError, match=rf"mira\.toml: missing required key '{key}'"):
        load_npc_file(path)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("id = 7", "id"),
        ('interruptible = "yes"', "interruptible"),
        ("max_queue = true", "max_queue"),
        ('memory_chars = "lots"', "memory_chars"),
        ("persona = 3.5", "persona"),
        ("busy = 1", "busy"),
    ],
)
def test_wrong_types(line: str, key: str) -> None:
    """A value of the wrong kind fails with a message naming the key and the value."""
    doc: dict[str, object] = {"id": "mira", "name": "Mira"}
    doc.update(tomllib.loads(line))
    with pytest.raises(NpcConfigError, match=rf"'{key}' must be"):
        parse_npc(doc, "mira.toml")


@pytest.mark.parametrize(("key", "value"), [("busy", "sometimes"), ("room_interrupt", "nobody")])
def test_bad_enum_value(key: str, value: str) -> None:
    """An enum key with an unknown value fails, listing the allowed values."""
    with pytest.raises(NpcConfigError, match=rf"'{key}' must be one of .*got '{value}'"):
        parse_npc({"id": "mira", "name": "Mira", key: value}, "mira.toml")


def test_bad_actions() -> None:
    """Actions must be an array of tables, each with a string name and typed fields."""
    base = {"id": "mira", "name": "Mira"}
    with pytest.raises(NpcConfigError, match="array of tables"):
        parse_npc({**base, "actions": {"name": "x"}})
    with pytest.raises(NpcConfigError, match=r"actions\[0\].*needs a 'name'"):
        parse_npc({**base, "actions": [{"approval": True}]})
    with pytest.raises(NpcConfigError, match=r"actions\[1\].*'approval' must be bool"):
        parse_npc({**base, "actions": [{"name": "a"}, {"name": "b", "approval": "yes"}]})


@pytest.mark.parametrize("kind", ["actions", "tools"])
@pytest.mark.parametrize("name", ["../../events?x=1 y", "", "a b", "x" * 65, "café", "a/b"])
def test_action_and_tool_names_follow_the_function_name_rule(
    tmp_path: Path, kind: str, name: str
) -> None:
    """A name a model server would refuse, or that would not be one path segment of the
    game server's URL, refuses to start naming the file and the entry."""
    path = write(
        tmp_path, "mira.toml", f'id = "mira"\nname = "Mira"\n[[{kind}]]\nname = "{name}"\n'
    )
    with pytest.raises(NpcConfigError, match=rf"mira\.toml.*{kind}\[0\]: 'name' must be"):
        load_npc_file(path)
    ok = write(tmp_path, "ok.toml", f'id = "ok"\nname = "Ok"\n[[{kind}]]\nname = "{"x" * 61}-_9"\n')
    assert load_npc_file(ok).id == "ok"


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    """A file that is not TOML fails with its path in the message."""
    path = write(tmp_path, "broken.toml", "id = \n")
    with pytest.raises(NpcConfigError, match=r"broken\.toml: not valid TOML"):
        load_npc_file(path)


def test_duplicate_ids(tmp_path: Path) -> None:
    """Two files defining the same id fail, naming the second file."""
    write(tmp_path, "a.toml", 'id = "mira"\nname = "Mira"\n')
    write(tmp_path, "b.toml", 'id = "mira"\nname = "Other Mira"\n')
    with pytest.raises(NpcConfigError, match=r"b\.toml: NPC id 'mira' is defined twice"):
        load_npcs(tmp_path)


def test_load_npcs_keys_by_id_and_ignores_other_files(tmp_path: Path) -> None:
    """Every *.toml is loaded under its id; other files are ignored."""
    write(tmp_path, "one.toml", 'id = "a"\nname = "A"\n')
    write(tmp_path, "two.toml", 'id = "b"\nname = "B"\n')
    write(tmp_path, "notes.txt", "not an npc")
    assert sorted(load_npcs(tmp_path)) == ["a", "b"]


def test_demo_npcs_load() -> None:
    """The three shipped demo NPCs load with the policies the demo relies on."""
    npcs = load_npcs(DEMO_DIR)
    assert sorted(npcs) == ["guard", "merchant", "questgiver"]
    assert npcs["merchant"].busy is BusyPolicy.QUEUE
    assert npcs["guard"].busy is BusyPolicy.INTERRUPT
    assert npcs["guard"].interruptible
    quest = npcs["questgiver"]
    assert (quest.busy, quest.interruptible) == (BusyPolicy.QUEUE, True)
    assert quest.room_interrupt is RoomInterrupt.ANYONE
    for npc in npcs.values():
        assert npc.persona, npc.id
        assert npc.greeting, npc.id
        assert npc.backend == "scripted"


@pytest.mark.parametrize(
    ("npc_id", "action", "approval"),
    [
        ("merchant", "open_shop", True),
        ("merchant", "give_item", False),
        ("guard", "draw_sword", False),
        ("questgiver", "offer_quest", True),
    ],
)
def test_demo_actions_exist(npc_id: str, action: str, approval: bool) -> None:
    """The demo NPCs declare their key actions with the intended approval flag."""
    spec = load_npcs(DEMO_DIR)[npc_id].action(action)
    assert spec is not None
    assert spec.approval is approval


def test_demo_scripts_are_valid() -> None:
    """Every demo script builds a scripted backend (markers name declared actions)."""
    for npc in load_npcs(DEMO_DIR).values():
        ScriptedBackend(npc, npc.backend_settings)
        assert all(len(t["replies"]) >= 2 for t in npc.backend_settings["topics"]), npc.id


# Strict keys and ranges: a mistake stops the start, naming the file and the key.


@pytest.mark.parametrize(
    ("doc", "where", "key", "suggestion"),
    [
        ({"bussy": "queue"}, r"mira\.toml", "bussy", "busy"),
        ({"greting": "Hi"}, r"mira\.toml", "greting", "greeting"),
        (
            {"actions": [{"name": "a", "aproval": True}]},
            r"mira\.toml actions\[0\]",
            "aproval",
            "approval",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_valid_ones(
    doc: dict[str, object], where: str, key: str, suggestion: str
) -> None:
    """A misspelt key names the file, the key, the close match and every valid key."""
    with pytest.raises(NpcConfigError) as info:
        parse_npc({"id": "mira", "name": "Mira", **doc}, "mira.toml")
    message = str(info.value)
    assert re.match(rf"{where}: unknown key '{key}' \(did you mean '{suggestion}'\?\)", message)
    assert "valid keys: " in message and f"{suggestion}," in message


def test_unknown_backend_kind_lists_the_known_kinds() -> None:
    """`[backend] kind` must be a known backend; the message lists them."""
    with pytest.raises(
        NpcConfigError,
        match=r"mira\.toml: \[backend\] 'kind' must be one of 'scripted', 'openai', got 'openia'",
    ):
        parse_npc({"id": "mira", "name": "Mira", "backend": {"kind": "openia"}}, "mira.toml")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"id": " "}, r"'id' must be a non-empty string"),
        ({"max_queue": -1}, r"'max_queue' must be an integer >= 0, got -1"),
        ({"memory_chars": -5}, r"'memory_chars' must be an integer >= 0"),
        (
            {"actions": [{"name": "a", "timeout_s": 0}]},
            r"actions\[0\]: 'timeout_s' must be a number of seconds > 0",
        ),
        (
            {"actions": [{"name": "a"}, {"name": "a"}]},
            r"actions\[1\]: action 'a' is declared twice",
        ),
        ({"actions": ["a"]}, r"actions\[0\]: each \[\[actions\]\] entry must be a table"),
        ({"backend": "scripted"}, r"'backend' must be a table"),
    ],
)
def test_values_out_of_range_are_refused(doc: dict[str, object], message: str) -> None:
    """Empty ids, negative sizes, zero timeouts and duplicate actions name the key and the rule."""
    with pytest.raises(NpcConfigError, match=rf"mira\.toml.*{message}"):
        parse_npc({"id": "mira", "name": "Mira", **doc}, "mira.toml")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    """An NPC directory that does not exist is an error, not a server without NPCs."""
    with pytest.raises(NpcConfigError, match=r"nowhere: no such NPC directory"):
        load_npcs(tmp_path / "nowhere")


def test_npc_remembers_its_file(tmp_path: Path) -> None:
    """Each NpcConfig carries its file, so backend errors can name it."""
    path = write(tmp_path, "mira.toml", GOOD)
    assert load_npcs(tmp_path)["mira"].source == str(path)


def test_dotfiles_are_skipped(tmp_path: Path) -> None:
    """Editors' hidden copies and lock files are no NPCs: Emacs's `.#guard.toml` is a
    link to nothing, a hidden `.guard.toml` may be a half-written copy."""
    write(tmp_path, "guard.toml", 'id = "guard"\nname = "Guard"\n')
    (tmp_path / ".#guard.toml").symlink_to("u@h.1:1")
    write(tmp_path, ".guard.toml", 'id = "guard"\nname = "Guard, an old copy"\n')
    assert sorted(load_npcs(tmp_path)) == ["guard"]


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """TOML is UTF-8: a Latin-1 file is an NpcConfigError naming it, not a UnicodeDecodeError."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b'id = "x"\nname = "\xff"\n')
    with pytest.raises(NpcConfigError, match=rf"^{path}: not UTF-8 text"):
        load_npcs(tmp_path)


def test_a_directory_named_like_an_npc_file_names_it(tmp_path: Path) -> None:
    """A directory `x.toml` matches the pattern; it is refused by name, not an IsADirectoryError."""
    (tmp_path / "x.toml").mkdir()
    with pytest.raises(
        NpcConfigError, match=rf"^{tmp_path / 'x.toml'}: cannot be read: .*directory"
    ):
        load_npcs(tmp_path)


def test_a_link_to_nothing_names_the_file_and_its_target(tmp_path: Path) -> None:
    """A dangling link that is not a dotfile is refused by name, not a FileNotFoundError."""
    (tmp_path / "gone.toml").symlink_to(tmp_path / "moved" / "gone.toml")
    with pytest.raises(
        NpcConfigError, match=r"gone\.toml: cannot be read: a symbolic link to .*moved"
    ):
        load_npcs(tmp_path)


def test_a_missing_directory_names_where_it_was_set(tmp_path: Path) -> None:
    """The error names the setting the directory came from, when given."""
    where = "server.toml: [server] npcs_dir"
    with pytest.raises(NpcConfigError, match=rf"^{re.escape(where)}: .*nowhere: no such NPC"):
        load_npcs(tmp_path / "nowhere", where)
