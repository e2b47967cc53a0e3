"""Prompts from class names: named template sets, a suffix, an optional style token. Paper (docs/method.md): without
DSI "a good photo of the {class}"; with DSI "a {class} photo in the style of S*". `imagenet80`: CLIP's 80 templates."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from synthtl.errors import ConfigError

STYLE_TOKEN = "<synthtl-style>"  # default pseudo-token S* (the style issue's learned embedding)
FIXED = {"single": "a good photo of the {}.", "style": "a {} photo in the style of {token}."}  # one-template sets


def template_set(name: str, custom: list[str] | None = None) -> list[str]:
    """The templates of a named set ("single", "imagenet80", "style", "custom"); "{}" is the class name."""
    if name in FIXED:
        return [FIXED[name]]
    if name == "imagenet80":
        text = resources.files("synthtl.generation").joinpath("imagenet80.txt").read_text()
        return [line.strip() for line in text.splitlines() if line.strip()]
    if name != "custom":
        raise ConfigError(f"prompts.templates={name!r}: choose single, imagenet80, style or custom")
    if not custom:
        raise ConfigError("prompts.templates=custom needs prompts.custom: templates with {} for the class name")
    bad = [t for t in custom if "{}" not in t]
    if bad:
        raise ConfigError(f"prompts.custom templates must contain {{}} for the class name: {bad}")
    return list(custom)


def needs_token(templates: list[str]) -> bool:
    return any("{token}" in t for t in templates)


def make_prompt(template: str, class_name: str, suffix: str = "", token: str = "") -> str:
    """Fills a template: "{}" with the class name, "{token}" with the style token; appends the suffix."""
    if "{token}" in template and not token:
        raise ConfigError(f"template {template!r} uses {{token}}: set prompts.style_embedding to a learned style "
                          "(`synthtl learn-style`)")
    text = template.replace("{token}", token).replace("{}", class_name)
    return text.rstrip(".") + suffix if suffix else text


def prompt_for(templates: list[str], class_name: str, index: int, suffix: str = "",
               token: str = "") -> tuple[str, int]:
    """(prompt, template index) of a class's index-th image: templates are cycled over a class's images."""
    t = index % len(templates)
    return make_prompt(templates[t], class_name, suffix, token), t


def fit_prompt(templates: list[str], class_name: str, index: int, count_tokens: Callable[[str], int],
               max_tokens: int, suffix: str = "", token: str = "") -> dict:
    """`prompt_for`'s prompt as {"prompt", "template", "truncated", "requested_prompt"}, shortened to fit.

    The pipeline silently drops tokens past `max_tokens` (77 for SD, start and end included, as `count_tokens` counts),
    which would drop a style token after a long class name while the manifest claims the style. So only the class name
    is cut (longest fitting prefix, at a word boundary); template, suffix and token always survive (else ConfigError).
    """
    requested, t = prompt_for(templates, class_name, index, suffix, token)

    def fits(name: str) -> bool:
        return count_tokens(make_prompt(templates[t], name, suffix, token)) <= max_tokens

    if fits(class_name):
        return {"prompt": requested, "template": t, "truncated": False, "requested_prompt": requested}
    if not fits(""):
        raise ConfigError(f"template {templates[t]!r} with suffix {suffix!r} is longer than the text encoder's "
                          f"{max_tokens} tokens even without a class name; shorten prompts.suffix or the template")
    lo, hi = 0, len(class_name)  # the longest prefix that fits: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(class_name[:mid].rstrip()) else (lo, mid)
    short = class_name[:lo]
    if " " in short.strip() and hi < len(class_name) and not class_name[lo].isspace():
        short = short[:short.rstrip().rfind(" ")]  # cut at a word boundary, not mid-word
    prompt = make_prompt(templates[t], short.rstrip(), suffix, token)
    return {"prompt": prompt, "template": t, "truncated": True, "requested_prompt": requested}
