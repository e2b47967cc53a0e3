"""Prompts from class names: named template sets, a per-dataset suffix, an optional style token.

Paper (METHOD.md): without DSI a single CLIP ImageNet template, "a good photo of the {class}"; with DSI
"a {class} photo in the style of S*". `imagenet80` cycles CLIP's 80 ImageNet templates over a class's images.
"""

from __future__ import annotations

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
