"""Textual inversion: Dataset Style Inversion (one token S* for a dataset) or one token per class.

Paper (docs/method.md, section 4): one pseudo-token learned from the real training images with prompts naming each
image's class ("a {class} photo in the style of S*"), ~20k steps. Ours: per-class mode (same prompts: a clean
comparison), trained as N separate runs in one process: each batch holds one class, classes take turns
(`data.class_pool`), and a token absent from a batch gets no gradient, so AdamW leaves it alone (no decay, moments
or step count); its warmup follows its own updates. The vectors are separate fp32 parameters that a hook writes into
the text encoder's embedding output, so no other embedding row can change."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import save

from synthtl.config import StyleConfig
from synthtl.errors import ConfigError
from synthtl.files import write_bytes
from synthtl.generation.families import text_encoders, tokenizers
from synthtl.generation.styles import EMBEDS, SDXL_KEYS, embeddings_hash
from synthtl.runtime import derive_seed, is_main
from synthtl.style.data import class_pool
from synthtl.style.recipe import StyleRecipe, Unit, loss_curve


@dataclass
class Inversion:
    """The learnable state: new tokens (each with `vectors` sub-tokens), their fp32 vectors and update counts."""

    tokens: list[str]  # one per class (class mode) or one (dataset mode)
    sub_tokens: list[list[str]]  # the tokenizer entries of each token: [S*, S*_1, ...]
    learned: list[torch.nn.Parameter]  # one (vectors, dim) float32 parameter per token: each has its own Adam state
    encoder_ids: list[torch.Tensor]  # the sub-tokens' ids in each text encoder's tokenizer, in token order
    widths: list[int]  # one per text encoder: each token's vectors side by side (SDXL base: 768 + 1280)
    updates: list[int]  # optimizer steps each token has taken

    @property
    def ids(self) -> torch.Tensor:
        return self.encoder_ids[0]

    def prompt_token(self, t: int) -> str:
        """What a prompt contains for token t: every sub-token, as diffusers' multi-vector convention does."""
        return " ".join(self.sub_tokens[t])

    def state(self) -> dict[str, torch.Tensor]:
        """{token: (vectors, dim)}: learned_embeds.safetensors; two encoders (SDXL, one token): diffusers' SDXL layout
        {"clip_l": (vectors, 768), "clip_g": (vectors, 1280)}, one `load_textual_inversion` call per encoder."""
        state = {tok: p.detach().float().cpu().clone() for tok, p in zip(self.tokens, self.learned, strict=True)}
        if len(self.widths) == 1:
            return state
        vectors, left = state[self.tokens[0]], self.widths[0]
        return {SDXL_KEYS[0]: vectors[:, :left].contiguous(), SDXL_KEYS[1]: vectors[:, left:].contiguous()}


def add_tokens(pipe, cfg: StyleConfig, num_classes: int, device: torch.device) -> Inversion:
    """Adds the new tokens to every tokenizer and embedding table; a token's parameter holds one vector per text encoder
    side by side, each from the initializer's. ConfigError: a token already there, or a multi-token initializer."""
    tokens = [cfg.token] if cfg.mode == "dataset" else [  # <synthtl-style> -> <synthtl-style-0>, ...
        f"{cfg.token[:-1]}-{c}>" if cfg.token.endswith(">") else f"{cfg.token}-{c}" for c in range(num_classes)]
    sub_tokens = [[t] + [f"{t}_{i}" for i in range(1, cfg.vectors)] for t in tokens]
    flat, encoder_ids, inits = [s for subs in sub_tokens for s in subs], [], []
    for tokenizer, text_encoder in zip(tokenizers(pipe), text_encoders(pipe), strict=True):
        init_ids = tokenizer.encode(cfg.initializer, add_special_tokens=False)
        if len(init_ids) != 1:
            raise ConfigError(f"initializer={cfg.initializer!r} is {len(init_ids)} tokens for this tokenizer; choose "
                              "a word that is a single token (e.g. photo, style, painting)")
        text_encoder.requires_grad_(False)  # only the separate fp32 vectors learn
        vocab = tokenizer.get_vocab()
        # "photo" is stored as "photo</w>" in CLIP's vocabulary: adding it would silently re-map that word everywhere.
        clash = [s for s in flat if s in vocab or f"{s.lower()}</w>" in vocab]
        if clash:
            raise ConfigError(f"token {clash[0]!r} is already in the tokenizer; pick another style.token (e.g. "
                              "<my-dataset-style>)")
        tokenizer.add_tokens(flat)
        try:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        except TypeError:  # transformers < 4.46
            text_encoder.resize_token_embeddings(len(tokenizer))
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(flat))
        table = text_encoder.get_input_embeddings().weight
        inits.append(table[init_ids[0]].detach().float().clone())
        with torch.no_grad():
            table[ids] = inits[-1].to(table.dtype)  # the table rows are never read: the hook replaces them
        encoder_ids.append(ids.to(device))
    init = torch.cat(inits)
    learned = [torch.nn.Parameter(init.repeat(len(subs), 1).to(device)) for subs in sub_tokens]
    return Inversion(tokens, sub_tokens, learned, encoder_ids, [len(i) for i in inits], [0] * len(tokens))


def install_hook(text_encoder, inv: Inversion, encoder: int = 0):
    """Makes the embedding layer output the learned vectors (cast) at the new tokens' positions; only tokens in the
    prompts enter the graph, so the others get no gradient. `encoder`: which text encoder (its ids, columns)."""
    size, rows = len(text_encoder.get_input_embeddings().weight), inv.encoder_ids[encoder]
    token_of = torch.full((size,), -1, dtype=torch.long, device=rows.device)
    vector_of = torch.zeros(size, dtype=torch.long, device=rows.device)
    token_of[rows] = torch.tensor([t for t, subs in enumerate(inv.sub_tokens) for _ in subs], device=rows.device)
    vector_of[rows] = torch.tensor([v for subs in inv.sub_tokens for v in range(len(subs))], device=rows.device)
    lo, hi = sum(inv.widths[:encoder]), sum(inv.widths[:encoder + 1])

    def hook(module, inputs, output):
        ids = inputs[0]
        tok = token_of.to(ids.device)[ids]
        present = tok[tok >= 0].unique().tolist()
        if not present:
            return output
        vec = vector_of.to(ids.device)[ids]
        out = output.clone()
        for t in present:
            mask = tok == t
            out[mask] = inv.learned[t][vec[mask], lo:hi].to(out.dtype)
        return out

    return text_encoder.get_input_embeddings().register_forward_hook(hook)


class InversionRecipe(StyleRecipe):
    checkpoint_format = 2  # one parameter and param group per token
    default_templates = [  # ours: each names the image's class, as the paper's DSI prompt does
        "a {} photo in the style of {token}.",
        "a photo of a {} in the style of {token}.",
        "a rendition of a {} in the style of {token}.",
        "a picture of a {} in the style of {token}.",
        "a cropped photo of a {} in the style of {token}.",
        "a close-up photo of a {} in the style of {token}.",
    ]

    def check_images(self) -> None:
        n = self.images.num_classes
        if self.cfg.mode == "class" and self.total_steps < n:
            raise ConfigError(f"mode=class with steps={self.total_steps} leaves some of the {n} class tokens "
                              "untrained; set steps_per_class (paper: 5000) or steps >= the number of classes")

    def add_params(self) -> None:
        if self.sdxl and self.cfg.mode != "dataset":  # diffusers' SDXL embedding file holds one token
            raise ConfigError("mode=class is not supported for SDXL generators (diffusers' SDXL embedding file holds "
                              "one token); use mode=dataset, or an SD 1.x/2.x generator for per-class tokens")
        self.inv = add_tokens(self.pipe, self.cfg, self.images.num_classes, self.rt.device)
        self.hooks = [install_hook(e, self.inv, k) for k, e in enumerate(text_encoders(self.pipe))]
        # One param group per token: AdamW skips a grad of None, so no token moves another (module doc).
        self.opt = torch.optim.AdamW([{"params": [p]} for p in self.inv.learned], lr=self.base_lr,
                                     weight_decay=self.cfg.weight_decay)

    def make_units(self) -> list[Unit]:
        groups, seed = self.groups, self.cfg.seed
        if self.cfg.mode == "dataset":
            return [Unit(-1, self.total_steps, lambda step: groups, self.out / "checkpoint.pt")]
        self.require_every_class("token")
        return [Unit(-1, self.total_steps, lambda step: class_pool(seed, groups, step), self.out / "checkpoint.pt")]

    def step_seed(self, u: Unit, step: int) -> int:
        return derive_seed(self.cfg.seed, "style-step", step)

    def prompt(self, template: str, y: int) -> str:
        token = self.inv.prompt_token(0 if self.cfg.mode == "dataset" else y)
        return super().prompt(template.replace("{token}", token), y)

    def set_lr(self, step: int) -> None:
        for t, group in enumerate(self.opt.param_groups):  # group t holds token t: its own warmup
            group["lr"] = self.lr_at(self.inv.updates[t])

    def apply(self) -> bool:
        """Only the tokens named in the prompts have a gradient, so only they step and count an update."""
        stepped = [t for t, p in enumerate(self.inv.learned) if p.grad is not None]
        taken = super().apply()
        if taken:
            for t in stepped:
                self.inv.updates[t] += 1
        return taken

    def params_state(self) -> dict:
        return {"learned": [p.detach().cpu() for p in self.inv.learned], "updates": self.inv.updates}

    def load_params_state(self, state: dict) -> None:
        with torch.no_grad():
            for p, saved in zip(self.inv.learned, state["learned"], strict=True):
                p.copy_(saved)
        self.inv.updates[:] = list(state["updates"])

    def end_unit(self, u: Unit, record: dict) -> dict:
        if is_main():
            self.validate(self.grid_classes, self.out / "validation" / f"step-{record['steps']:06d}.png")
        for hook in self.hooks:
            hook.remove()
        return record

    def validation_inputs(self, c: int) -> dict:
        """The class's prompt, embedded here as in training: given the text, diffusers would expand an already
        expanded multi-vector token again ("S* S*_1" -> "S* S*_1 S* S*_1_1")."""
        prompt = self.prompt(self.templates[0], c)
        embeds, added = self.encode([prompt] * self.cfg.validation_images)
        pooled = {"pooled_prompt_embeds": added["text_embeds"]} if added else {}  # SDXL; sizes: the defaults
        return {"prompt_embeds": embeds, **pooled}

    def files(self, records: list[dict]) -> dict:
        cfg, inv, names, losses = self.cfg, self.inv, self.images.names, records[0]["losses"]
        state, curve, per_class = inv.state(), loss_curve(losses), cfg.mode == "class"
        if is_main():
            write_bytes(self.out / EMBEDS, save(state))
            if per_class:  # one diffusers-format file per token as well
                for tok, emb in state.items():
                    write_bytes(self.out / "tokens" / f"{tok.strip('<>')}.safetensors", save({tok: emb}))
            print(f"[synthtl] learned {len(inv.tokens)} token(s) in {records[0]['train_seconds']:.0f} s "
                  f"(final loss {curve[-1]['loss']:.4f}) -> {self.out / EMBEDS}")
        return {"mode": cfg.mode, "tokens": inv.tokens, "vectors": cfg.vectors, "initializer": cfg.initializer,
                "class_tokens": {n: inv.tokens[c] for c, n in enumerate(names)} if per_class else {},
                "classes": list(names), "steps": len(losses), "total_steps": self.total_steps,
                "steps_per_class": (cfg.steps_per_class or self.total_steps // len(names)) if per_class else None,
                "token_updates": dict(zip(inv.tokens, inv.updates, strict=True)), "loss_curve": curve}

    def style_hash(self) -> str:
        return embeddings_hash(self.out / EMBEDS)
