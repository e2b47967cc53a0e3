"""`synthtl learn-style`: one writer, identity and resume, then the recipe (inversion, or LoRA: ours)."""

from __future__ import annotations

from pathlib import Path

from synthtl import identity
from synthtl.config import StyleConfig, to_yaml
from synthtl.errors import ConfigError
from synthtl.files import exclusive, read_json, remove_temps, write_text
from synthtl.generation.styles import EMBEDS, STYLE_JSON
from synthtl.runtime import is_main, world_size
from synthtl.style.inversion import InversionRecipe
from synthtl.style.lora import LoraRecipe
from synthtl.style.recipe import StyleRecipe

RECIPES = {"inversion": InversionRecipe, "lora": LoraRecipe}  # lora: ours, beyond the paper


def run_learn_style(cfg: StyleConfig, recipe: type[StyleRecipe] | None = None) -> dict:
    """Learns, resumes or skips a style under the folder's lock; returns style.json (`recipe`: tests pass one)."""
    if world_size() > 1:  # checked before anything loads: N ranks would each learn, and race on the same files
        raise ConfigError(f"learn-style was started as {world_size()} processes (WORLD_SIZE): run learn-style as a "
                          "single process; style learning has no multi-GPU mode yet (start it without torchrun)")
    out = Path(cfg.out_dir)
    ident = identity.identity(cfg)
    with exclusive(out, "style folder"):
        remove_temps(out, recursive=True)  # what a killed run's atomic writes left; safe: we hold the lock
        identity.check(out, "style", ident)
        if (out / STYLE_JSON).is_file() and (cfg.method == "lora" or (out / EMBEDS).is_file()):
            for left in out.rglob("checkpoint.pt"):  # a kill between style.json and removing the resume state
                left.unlink()
            if is_main():
                print(f"[synthtl] {out} is already finished; nothing to do")
            return read_json(out / STYLE_JSON)
        identity.claim(out, "style", ident)
        write_text(out / "config.yaml", to_yaml(cfg))
        return (recipe or RECIPES[cfg.method])(cfg, out, identity.digest(ident)).run()
