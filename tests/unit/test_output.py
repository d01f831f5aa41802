"""OutputText: UTF-8 reassembly and stop strings with hold-back."""

from hypothesis import given
from hypothesis import strategies as st

from lmgate.backends.engine.output_text import OutputText


def feed(out: OutputText, pieces: list[bytes]) -> list[str]:
    emitted = [out.append(p) for p in pieces]
    emitted.append(out.finish())
    return emitted


def test_multibyte_character_split_across_tokens_is_emitted_whole():
    out = OutputText()
    euro = "€".encode()  # three bytes
    assert out.append(euro[:1]) == ""
    assert out.append(euro[1:2]) == ""
    assert out.append(euro[2:] + b"!") == "€!"


def test_unfinished_character_at_the_end_becomes_replacement_char():
    out = OutputText()
    assert out.append("é".encode()[:1]) == ""
    assert out.finish() == "\ufffd"


def test_stop_string_is_cut_and_never_emitted():
    out = OutputText(stop=("END",))
    emitted = [out.append(p) for p in (b"Hello E", b"N", b"D and more")]
    assert "".join(emitted) == "Hello "
    assert out.stopped
    assert out.text == "Hello "
    assert out.finish() == ""
    assert out.append(b"late") == ""


def test_partial_stop_is_held_back_then_released_when_it_does_not_complete():
    out = OutputText(stop=("STOP",))
    assert out.append(b"ab ST") == "ab "
    assert out.append(b"O") == ""
    assert out.append(b"X") == "STOX"
    assert not out.stopped


def test_earliest_of_several_stops_wins():
    out = OutputText(stop=("world", "lo"))
    assert out.append(b"hello world") == "hel"
    assert out.stopped


text_pieces = st.lists(st.text(alphabet="abcST€ü ", max_size=4), max_size=12)


@given(pieces=text_pieces, stop=st.text(alphabet="abST€", min_size=1, max_size=3))
def test_streamed_text_equals_whole_text_cut_before_first_stop(pieces, stop):
    whole = "".join(pieces)
    out = OutputText(stop=(stop,))
    # Split every piece's bytes at arbitrary points: tokens may end mid-character.
    byte_pieces = [bytes([b]) for p in pieces for b in p.encode()]
    emitted = "".join(feed(out, byte_pieces))
    cut = whole.find(stop)
    assert emitted == (whole if cut < 0 else whole[:cut])
    assert stop not in emitted
