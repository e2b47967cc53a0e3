"""The real CLIP tokenizer (converted from clip-anytorch's BPE file) against CLIP's own reference tokenizer."""

from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from synthtl.config import StyleConfig, load_config
from synthtl.errors import ConfigError
from synthtl.generation.prompts import prompt_for, template_set
from synthtl.style.inversion import add_tokens, install_hook
from tests.fullsize import sd15

PROMPTS = [
    "a good photo of the Boeing 737-800.",
    "A good photo of the F-16A/B, a type of aircraft.",
    "itap of a DHC-8-100.",
    "a café  photo of the Tu-154!!",
    "a rendition of the 707-320 in the style of sks.",
]


def test_vocabulary_is_clips(clip_tokenizer):
    assert len(clip_tokenizer) == sd15.CLIP_VOCAB_SIZE == 49408
    vocab = clip_tokenizer.get_vocab()
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert clip_tokenizer.model_max_length == 77 and clip_tokenizer.pad_token_id == 49407
    assert clip_tokenizer.tokenize("photo") == ["photo</w>"]
    assert clip_tokenizer.encode("photo", add_special_tokens=False) == [1125]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_clips_reference_tokenizer(clip_tokenizer, prompt):
    ref = sd15.reference_tokenizer()  # clip-anytorch's simple_tokenizer.py, loaded by file path
    expected = [ref.encoder[sd15.SOT], *ref.encode(prompt), ref.encoder[sd15.EOT]]
    assert clip_tokenizer(prompt).input_ids == expected


def test_generation_prompts_round_trip(clip_tokenizer):
    """Every prompt template synthtl generates with tokenizes as CLIP does, and fits CLIP's 77 positions."""
    ref = sd15.reference_tokenizer()
    for name in ("single", "imagenet80"):
        templates = template_set(name, [])
        for i in range(0, len(templates), 7):
            prompt = prompt_for(templates, "Boeing 737-800", i, "", "")[0]
            ids = clip_tokenizer(prompt).input_ids
            assert ids == [ref.encoder[sd15.SOT], *ref.encode(prompt), ref.encoder[sd15.EOT]]
            assert len(ids) <= 77


def test_dsi_token_is_one_piece(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir))
    # A narrow text encoder with CLIP's vocabulary: add_tokens only needs the embedding table.
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77))
    cfg = load_config(StyleConfig, None, [])
    inv = add_tokens(SimpleNamespace(tokenizer=tok, text_encoder=te), cfg, 3, torch.device("cpu"))
    assert inv.tokens == ["<synthtl-style>"] and inv.ids.tolist() == [49408]
    prompt = f"a Boeing 737-800 photo in the style of {inv.prompt_token(0)}."
    assert tok.tokenize(prompt)[-2:] == ["<synthtl-style>", ".</w>"]
    ids = tok(prompt).input_ids
    assert ids.count(49408) == 1 and len(ids) == len(tok("a Boeing 737-800 photo in the style of sks.").input_ids)
    # The initializer "photo" is one token, so the learned vector starts from its row.
    table = te.get_input_embeddings().weight
    assert torch.equal(inv.state()["<synthtl-style>"][0], table[1125].detach())
    hook = install_hook(te, inv)
    with torch.no_grad():
        emb = te.get_input_embeddings()(torch.tensor([ids]))
    assert torch.equal(emb[0, ids.index(49408)], table[1125].detach())
    hook.remove()


def test_a_word_already_in_clips_vocabulary_is_refused(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77))
    with pytest.raises(ConfigError, match="already in the tokenizer"):
        add_tokens(SimpleNamespace(tokenizer=tok, text_encoder=te), load_config(StyleConfig, None, ["token=painting"]),
                   3, torch.device("cpu"))
    with pytest.raises(ConfigError, match="single token"):
        add_tokens(SimpleNamespace(tokenizer=tok, text_encoder=te),
                   load_config(StyleConfig, None, ["initializer=photograph-of"]), 3, torch.device("cpu"))
