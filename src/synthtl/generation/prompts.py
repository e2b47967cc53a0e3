"""Prompts from class names: named template sets, a per-dataset suffix, an optional style token.

Paper (docs/method.md): without DSI a single CLIP ImageNet template, "a good photo of the {class}"; with DSI
"a {class} photo in the style of S*". `imagenet80` cycles CLIP's 80 ImageNet templates over a class's images.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources

from synthtl.errors import ConfigError

STYLE_TOKEN = "<synthtl-style>"  # default pseudo-token S* (the style issue's learned embedding)


def _imagenet80() -> list[str]:
    text = resources.files("synthtl.generation").joinpath("imagenet80.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def template_set(name: str, custom: list[str] | None = None) -> list[str]:
    """The templates of a named set ("single", "imagenet80", "style", "custom"); "{}" is the class name."""
    if name == "single":
        return ["a good photo of the {}."]
    if name == "imagenet80":
        return _imagenet80()
    if name == "style":
        return ["a {} photo in the style of {token}."]
    if name == "custom":
        if not custom:
            raise ConfigError("prompts.templates=custom needs prompts.custom: templates with {} for the class name")
        bad = [t for t in custom if "{}" not in t]
        if bad:
            raise ConfigError(f"prompts.custom templates must contain {{}} for the class name: {bad}")
        return list(custom)
    raise ConfigError(f"prompts.templates={name!r}: choose single, imagenet80, style or custom")


def needs_token(templates: list[str]) -> bool:
    return any("{token}" in t for t in templates)


def make_prompt(template: str, class_name: str, suffix: str = "", token: str = "") -> str:
    """Fills a template: "{}" with the class name, "{token}" with the style token; appends the suffix."""
    if "{token}" in template and not token:
        raise ConfigError(f"template {template!r} uses {{token}}: set prompts.style_embedding to a learned style "
                          "(`synthtl learn-style`)")
    text = template.replace("{token}", token).replace("{}", class_name)
    if suffix:
        text = text.rstrip(".") + suffix
    return text


def prompt_for(templates: list[str], class_name: str, index: int, suffix: str = "",
               token: str = "") -> tuple[str, int]:
    """(prompt, template index) of a class's index-th image: templates are cycled over a class's images."""
    t = index % len(templates)
    return make_prompt(templates[t], class_name, suffix, token), t


def fit_prompt(templates: list[str], class_name: str, index: int, count_tokens: Callable[[str], int],
               max_tokens: int, suffix: str = "", token: str = "") -> dict:
    """The prompt of a class's index-th image, shortened so that the text encoder reads all of it.

    CLIP's text encoder reads `max_tokens` tokens (77 for Stable Diffusion) and the pipeline silently drops the
    rest, which would drop a style token placed after a long class name while the manifest still claims the style.
    So when the prompt is too long, the class name (only it) is cut at the longest prefix that fits, preferring a
    word boundary; the template, suffix and style token always survive.

    Args:
        templates: The template set; cycled over a class's images.
        class_name: The readable class name.
        index: The image's index within its class.
        count_tokens: Tokens the text encoder gets for a prompt, start and end tokens included.
        max_tokens: The text encoder's limit (the tokenizer's model_max_length).
        suffix: Appended to every prompt.
        token: The style token filling "{token}".

    Returns:
        {"prompt": what is encoded, "template": template index, "truncated": whether the class name was cut,
        "requested_prompt": the prompt before cutting}.

    Raises:
        ConfigError: the template, suffix and token alone exceed the limit.
    """
    t = index % len(templates)
    requested = make_prompt(templates[t], class_name, suffix, token)
    if count_tokens(requested) <= max_tokens:
        return {"prompt": requested, "template": t, "truncated": False, "requested_prompt": requested}
    if count_tokens(make_prompt(templates[t], "", suffix, token)) > max_tokens:
        raise ConfigError(f"template {templates[t]!r} with suffix {suffix!r} is longer than the text encoder's "
                          f"{max_tokens} tokens even without a class name; shorten prompts.suffix or the template")
    lo, hi = 0, len(class_name)  # the longest prefix that fits: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(make_prompt(templates[t], class_name[:mid].rstrip(), suffix, token)) <= max_tokens:
            lo = mid
        else:
            hi = mid
    short = class_name[:lo]
    if " " in short.strip() and hi < len(class_name) and not class_name[lo].isspace():
        short = short[:short.rstrip().rfind(" ")]  # cut at a word boundary, not mid-word
    prompt = make_prompt(templates[t], short.rstrip(), suffix, token)
    return {"prompt": prompt, "template": t, "truncated": True, "requested_prompt": requested}
