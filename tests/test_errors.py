"""errors.cause: a library's reason, quoted in one line of ours, whatever its message looks like."""

from synthtl.errors import cause


def test_cause_is_the_type_and_the_first_line_cut_at_the_limit():
    assert cause(OSError("no such file\nTraceback (most recent call last): ...")) == "OSError: no such file"
    assert cause(ValueError("x" * 500)) == "ValueError: " + "x" * 200
    assert cause(ValueError("x" * 500), 120) == "ValueError: " + "x" * 120


def test_an_empty_or_blank_message_still_gives_one_line():
    assert cause(RuntimeError()) == "RuntimeError: "  # used to be an IndexError in the generator's offline message
    assert cause(RuntimeError("\n  \n")) == "RuntimeError: "
    assert cause(RuntimeError("\n  the reason\nmore")) == "RuntimeError: the reason"  # leading blank lines skipped


def test_the_generators_offline_message_survives_an_exception_without_text():
    from synthtl.generation.pipeline import _offline

    assert "could not load the generator 'x' (RuntimeError: ). Its files" in str(_offline("x", RuntimeError()))
