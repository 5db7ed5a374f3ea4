"""The scripted backend remembers: the first reply to a returning player opens with a line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from npc_server.backends.base import ActionPiece, TextPiece
from tests.backends.test_scripted import collect, make_backend, request, text_of

NO_PACING = {"first_token_ms": 0, "tokens_per_second": 0}


async def test_a_returning_player_is_greeted_by_name() -> None:
    """`returning`: the reply begins "Back again, ana? " and is otherwise the same reply."""
    backend = make_backend(**NO_PACING)
    stranger = text_of(await collect(backend, request("any wares?")))
    returning = text_of(await collect(backend, replace(request("any wares?"), returning=True)))
    assert stranger == "I sell rope and oil."
    assert returning == "Back again, ana? I sell rope and oil."


async def test_the_greeting_comes_before_an_action_and_keeps_its_offset() -> None:
    """An action right after the greeting's text is anchored after it."""
    backend = make_backend(**NO_PACING)
    pieces = await collect(backend, replace(request("a gift please"), returning=True))
    [action] = [p for p in pieces if isinstance(p, ActionPiece)]
    before = "".join(p.text for p in pieces[: pieces.index(action)] if isinstance(p, TextPiece))
    assert before.startswith("Back again, ana? Here you go, ana.")


async def test_the_line_is_a_setting_and_empty_turns_it_off() -> None:
    """`returning` in [backend] words the line (placeholders filled); "" says nothing extra."""
    worded = make_backend(**NO_PACING, returning="{npc_name} squints. You again, {player}.")
    silent = make_backend(**NO_PACING, returning="")
    req = replace(request("rain?"), returning=True)
    assert text_of(await collect(worded, req)) == "Mira squints. You again, ana. Rain soon."
    assert text_of(await collect(silent, req)) == "Rain soon."


@pytest.mark.parametrize("value", [3, "hi [[give_item]]"])
def test_a_returning_line_that_is_not_text_is_refused(value: object) -> None:
    """The setting is plain text: a number or a marker stops the NPC from loading."""
    with pytest.raises(ValueError, match="backend setting 'returning' must be text"):
        make_backend(**NO_PACING, returning=value)
