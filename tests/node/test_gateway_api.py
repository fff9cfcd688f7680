"""StreamText: streamed deltas never include a stop string and always add up to the text."""

from hypothesis import given
from hypothesis import strategies as st

from aipg.node.services.gateway_api import BadRequest, Overloaded, StreamText


def stream(pieces: list[str], stop: tuple[str, ...]) -> tuple[list[str], str]:
    """Feed growing text piece by piece, cutting at the first stop as a runner does."""
    out, text, final = StreamText(stop), "", None
    deltas = []
    for piece in pieces:
        text += piece
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            final = text[: min(hits)]
            break
        deltas.append(out.push(text))
    final = text if final is None else final
    deltas.append(out.finish(final))
    return deltas, final


def test_stop_string_is_held_back_until_it_is_decided():
    out = StreamText(("\n\n",), holdback=0)
    assert out.push("Hello") == "Hello"
    assert out.push("Hello\n") == ""  # could be the start of the stop string
    assert out.push("Hello\nW") == "\nW"
    assert out.push("Hello\nW\n") == ""
    assert out.finish("Hello\nW") == ""


def test_replacement_characters_wait_for_the_rest_of_the_character():
    out = StreamText(holdback=0)
    assert out.push("ab\ufffd\ufffd") == "ab"
    assert out.push("abé") == "é"
    assert out.finish("abé") == ""


@given(
    st.lists(st.text("ab\n", max_size=4), max_size=12),
    st.lists(st.text("ab\n", min_size=1, max_size=3), max_size=3).map(tuple),
)
def test_deltas_concatenate_to_the_final_text_and_never_show_a_stop(pieces, stop):
    deltas, final = stream(pieces, stop)
    assert "".join(deltas) == final
    streamed = ""
    for delta in deltas[:-1]:
        streamed += delta
        assert not any(s in streamed for s in stop)


def test_error_types_carry_their_fields():
    assert BadRequest("too big", "size").param == "size"
    assert Overloaded("busy", retry_after_s=0).retry_after_s == 1
