"""Generator families: which diffusers pipeline a model needs, and which text encoders condition its UNet.

Ours, beyond the paper (SD v1.5 only; docs/method.md "Beyond the paper"): SD 1.x/2.x (2.1 at 768 px predicts
velocity, as its scheduler config says) and SDXL (two CLIP text encoders, pooled embeddings, size/crop "time ids").
The family is read from the weights, never guessed: `model_index.json`'s `_class_name` (folder, hub snapshot or
`generator.single_file_config`) or a .safetensors file's key names; anything else is refused."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from synthtl.config import GeneratorConfig
from synthtl.errors import ConfigError
from synthtl.registry import Registry


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # the diffusers pipeline class
    load_kwargs: tuple[tuple[str, object], ...]  # for the pipeline's constructor / from_pretrained
    about: str  # what the family covers, for messages

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def kwargs(self) -> dict:
        return dict(self.load_kwargs)


FAMILIES: Registry[Family] = Registry("generator family")
FAMILIES.add("sd", Family(
    "sd", "StableDiffusionPipeline",
    # Ours: no safety checker (black outputs are detected and redrawn by generation instead).
    (("safety_checker", None), ("feature_extractor", None), ("requires_safety_checker", False)),
    "Stable Diffusion 1.x and 2.x (StableDiffusionPipeline; epsilon or v-prediction)"))
FAMILIES.add("sdxl", Family(
    "sdxl", "StableDiffusionXLPipeline",
    # Ours: no invisible watermark, so synthetic images carry no pattern that real ones lack.
    (("add_watermarker", False),),
    "Stable Diffusion XL base (StableDiffusionXLPipeline; two text encoders)"))
_BY_CLASS = {f.pipeline: f for _, f in FAMILIES.items()}


def supported() -> str:
    return "; ".join(f"{name}: {f.about}" for name, f in FAMILIES.items())


def family_from_index(index: dict, where: str) -> Family:
    """The family of a diffusers model_index.json's content; ConfigError for a pipeline synthtl does not support."""
    cls = index.get("_class_name", "")
    if cls not in _BY_CLASS:
        raise ConfigError(f"generator.model={where!r} is a {cls or 'pipeline without _class_name'}, which synthtl "
                          f"cannot use; supported generator families: {supported()}")
    return _BY_CLASS[cls]


def _family_of_single_file(path: Path) -> Family:
    """SD or SDXL from a .safetensors checkpoint's key names (its header only: no weights are read)."""
    if path.suffix != ".safetensors":
        return FAMILIES.get("sd")  # a .ckpt needs a full unpickle to inspect; set single_file_config for SDXL
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = f.keys()
    except Exception as e:  # SafetensorError: a damaged or foreign file
        raise ConfigError(f"generator.model={str(path)!r} is not a valid checkpoint file ({type(e).__name__}: "
                          f"{str(e)[:200]}): it is damaged, truncated or not a checkpoint of weights; download it "
                          "again or point at another file") from None
    # SDXL's original layout names its second text encoder (OpenCLIP ViT-bigG) "conditioner.embedders.1".
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return FAMILIES.get("sdxl")
    if any(k.startswith("conditioner.") for k in keys):  # SDXL refiner or SVD: one OpenCLIP embedder only
        raise ConfigError(f"generator.model={str(path)!r} is not a text-to-image SD/SDXL base checkpoint; supported "
                          f"generator families: {supported()}")
    return FAMILIES.get("sd")


def family_of(gen: GeneratorConfig) -> Family:
    """The generator's family from its files (module doc); OSError for an uncached, unreachable hub model."""
    model = gen.model
    if model == "tiny":
        return FAMILIES.get("sd")
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"generator.model={model!r} is a folder without model_index.json: not a diffusers "
                              "pipeline folder")
        return family_from_index(json.loads((path / "model_index.json").read_text()), model)
    if path.is_file():
        conf = Path(gen.single_file_config, "model_index.json")
        if gen.single_file_config and conf.is_file():
            return family_from_index(json.loads(conf.read_text()), gen.single_file_config)
        return _family_of_single_file(path)
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(model, "model_index.json", revision=gen.revision or None)
    return family_from_index(json.loads(Path(index).read_text()), model)


def family_of_pipeline(pipe) -> Family:
    name = type(pipe).__name__
    if name not in _BY_CLASS:
        raise ConfigError(f"a {name} is not a supported generator; supported generator families: {supported()}")
    return _BY_CLASS[name]


def text_encoders(pipe) -> list:
    """The pipeline's text encoders in conditioning order (SDXL: CLIP ViT-L, then OpenCLIP ViT-bigG)."""
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


def tokenizers(pipe) -> list:
    """The tokenizer of each text encoder, in the order of `text_encoders`."""
    return [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


# ------------------------------------------------------------------------------------ tiny random components (tests)
def tiny_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(resources.files("synthtl").joinpath("assets", "tiny_tokenizer")))


def _tiny(seed: int, encoders: dict, scheduler, scaling_factor: float = 0.18215, **unet) -> dict:
    """A UNet (block_out_channels (4, 8)), two-block VAE, `scheduler` and `encoders` {name: (width, extra)}: 2-layer
    CLIP text encoders of `width` (with a text projection where extra has `projection_dim`: SDXL's second), seeded,
    each with its own tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    toks = {name.replace("text_encoder", "tokenizer"): tiny_tokenizer() for name in encoders}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {"unet": UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            norm_num_groups=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **unet)}
        parts["vae"] = AutoencoderKL(
            block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
            sample_size=32, scaling_factor=scaling_factor)
        for (name, (width, extra)), tok in zip(encoders.items(), toks.values(), strict=True):
            config = CLIPTextConfig(
                vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
            parts[name] = (CLIPTextModelWithProjection if "projection_dim" in extra else CLIPTextModel)(config)
    return {**parts, **toks, "scheduler": scheduler}


def sd_scheduler(cls: str = "DPMSolverMultistepScheduler", **extra):
    """Stable Diffusion's noise schedule; DPM-Solver++ unless another class is named."""
    import diffusers

    extra = {"algorithm_type": "dpmsolver++", **extra} if cls == "DPMSolverMultistepScheduler" else extra
    return getattr(diffusers, cls)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                   **extra)


def tiny_components(seed: int = 0) -> dict:
    """A tiny random-weight SD 1.x (32x32, 2-layer CLIP of width 16) built from configs; same seed, same weights."""
    return _tiny(seed, {"text_encoder": (16, {})}, sd_scheduler(), cross_attention_dim=16, attention_head_dim=2)


def tiny_sd2_components(seed: int = 0, prediction_type: str = "v_prediction") -> dict:
    """A tiny random-weight SD 2.x (linear attention projections, GELU text encoder, `prediction_type`)."""
    return _tiny(seed, {"text_encoder": (24, {"hidden_act": "gelu"})}, sd_scheduler(prediction_type=prediction_type),
                 cross_attention_dim=24, attention_head_dim=(2, 4), use_linear_projection=True)


def tiny_sdxl_components(seed: int = 0) -> dict:
    """A tiny random-weight SDXL (32x32 images): text encoders of widths 16 and 24 (the second with projection), a
    UNet conditioned on both, the pooled projection and six size/crop time ids ("text_time")."""
    time_dim, proj_dim = 8, 8
    encoders = {"text_encoder": (16, {}), "text_encoder_2": (24, {"projection_dim": proj_dim, "hidden_act": "gelu"})}
    return _tiny(seed, encoders, sd_scheduler("EulerDiscreteScheduler"), 0.13025, cross_attention_dim=16 + 24,
                 attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + proj_dim)


def save_tiny(components: dict, folder: str | Path, family: str) -> Path:
    """Writes tiny components as a diffusers pipeline folder (what `generator.model=<folder>` loads)."""
    fam = FAMILIES.get(family)
    fam.pipeline_class()(**components, **fam.kwargs()).save_pretrained(str(folder))
    return Path(folder)
