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


def test_fit_prompt_cuts_only_the_class_name():
    from synthtl.generation.prompts import fit_prompt

    def words(text):  # a stand-in tokenizer: one token per word, plus start and end
        return len(text.split()) + 2

    style = template_set("style")
    short = fit_prompt(style, "pug", 0, words, 12, token="<s>")
    assert short == {"prompt": "a pug photo in the style of <s>.", "template": 0, "truncated": False,
                     "requested_prompt": "a pug photo in the style of <s>."}
    long = fit_prompt(style, "very " * 20 + "long dog", 0, words, 12, token="<s>", suffix=", a pet.")
    assert long["truncated"] and long["prompt"] == "a very photo in the style of <s>, a pet."
    assert words(long["prompt"]) == 12
    assert long["requested_prompt"].endswith("long dog photo in the style of <s>, a pet.")
    with pytest.raises(ConfigError, match="even without a class name"):
        fit_prompt(style, "pug", 0, words, 8, token="<s>")
