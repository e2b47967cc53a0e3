import pytest

from synthtl.errors import ConfigError
from synthtl.generation.prompts import make_prompt, prompt_for, template_set


def test_template_sets():
    assert template_set("single") == ["a good photo of the {}."]
    t80 = template_set("imagenet80")
    assert len(t80) == 80 and len(set(t80)) == 80 and all("{}" in t for t in t80)
    assert template_set("custom", ["a {} in snow"]) == ["a {} in snow"]
    with pytest.raises(ConfigError, match="must contain"):
        template_set("custom", ["no slot"])
    with pytest.raises(ConfigError, match="choose"):
        template_set("fancy")


def test_prompts_cycle_templates_and_take_suffix_and_token():
    t80 = template_set("imagenet80")
    assert prompt_for(t80, "A320", 0) == ("a bad photo of a A320.", 0)
    assert prompt_for(t80, "A320", 81)[1] == 1
    assert make_prompt("a good photo of the {}.", "747-400", ", a type of aircraft.") == \
        "a good photo of the 747-400, a type of aircraft."
    assert make_prompt(template_set("style")[0], "pug", token="<s>") == "a pug photo in the style of <s>."
    with pytest.raises(ConfigError, match="style_embedding"):
        make_prompt(template_set("style")[0], "pug")


def test_tokenizer_fixture_matches_the_shipped_copy():
    from importlib import resources
    from pathlib import Path

    shipped = resources.files("synthtl").joinpath("assets", "tiny_tokenizer")
    fixture = Path(__file__).parents[1] / "fixtures" / "tiny_tokenizer"
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (fixture / name).read_bytes() == shipped.joinpath(name).read_bytes()
