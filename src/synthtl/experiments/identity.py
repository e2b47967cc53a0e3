"""What a study job *is*, independent of where its files live and how fast it runs.

A job's identity is its resolved config without the keys that never change a result (`synthtl.config.*_VOLATILE`),
with every path replaced by what it points to: the dataset by name and content fingerprint, the generator weights
by content, an input made by another job of the study (a style embedding, a generated set) by that job's id, and a
file given by the user (a split file, local classifier weights) by its bytes. Job ids hash the identity, so a study
copied or moved to another disk (and its dataset with it) keeps every id and reruns nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from synthtl.config import (
    FINETUNE_VOLATILE,
    GENERATE_VOLATILE,
    STYLE_VOLATILE,
    DataConfig,
    GeneratorConfig,
    dict_diff,
    pop_key,
)
from synthtl.errors import DataError
from synthtl.files import content_sha256

# One generated set serves every volume by prefix, so its size is not part of its identity.
VOLATILE = {"style": STYLE_VOLATILE, "generate": (*GENERATE_VOLATILE, "per_class"), "finetune": FINETUNE_VOLATILE}
# Paths to inputs that another job of the study produces: replaced by the producer's id.
PRODUCED = {"style": (), "generate": ("prompts.style_embedding", "prompts.style_lora"),
            "finetune": ("synthetic.path", "synthetic.filter")}
# Paths to files the user supplies: replaced by their content hash.
USER_FILES = {"style": ("data.split_file",), "generate": ("data.split_file",),
              "finetune": ("data.split_file", "model.weights")}
# Generator keys that only say where the weights come from: replaced by the weights' identity.
_WEIGHT_SOURCE = ("model", "revision", "single_file_config", "tiny_seed")


def _put(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def file_identity(path: str) -> str:
    """The content hash of a user-supplied file (memoised per path, size and modification time)."""
    if not path:
        return ""
    try:
        return "sha256:" + content_sha256(path)[:16]
    except OSError:
        raise DataError(f"{path} does not exist; a study job's input file must be present when the study is "
                        "expanded (fix the path in the study's overrides)") from None


# The fields that say which dataset (not which split of it or how it is read): one fingerprint per dataset.
_DATASET_KEYS = ("name", "root", "train_dir", "test_dir", "train_csv", "test_csv", "cache_dir")
_FINGERPRINTS: dict[tuple, str | DataError] = {}  # also remembers failures: a missing dataset is looked for once


def forget_missing() -> None:
    """Looks for datasets that were missing again (a study expands anew after fetching them)."""
    for key in [k for k, v in _FINGERPRINTS.items() if isinstance(v, DataError)]:
        del _FINGERPRINTS[key]


def dataset_identity(data: DataConfig) -> str:
    """The dataset's content fingerprint (`synthtl.data.datasets.dataset_fingerprint`), once per dataset here.

    Raises:
        DataError: the dataset is not where `data.root` says.
    """
    from synthtl.data.datasets import dataset_fingerprint

    key = tuple(getattr(data, k) for k in _DATASET_KEYS)
    if key not in _FINGERPRINTS:
        try:
            _FINGERPRINTS[key] = dataset_fingerprint(data)
        except DataError as e:
            _FINGERPRINTS[key] = e
    found = _FINGERPRINTS[key]
    if isinstance(found, DataError):
        raise found
    return found


@functools.lru_cache(maxsize=64)
def _generator_identity(gen_json: str) -> str:
    from synthtl.config import from_dict
    from synthtl.generation.pipeline import generator_identity as identify

    return json.dumps(identify(from_dict(GeneratorConfig, json.loads(gen_json))), sort_keys=True)


def generator_identity(gen: GeneratorConfig) -> dict:
    """What identifies the generator's weights (`synthtl.generation.pipeline.generator_identity`), by content for
    local files, once per generator config here."""
    return json.loads(_generator_identity(json.dumps(dataclasses.asdict(gen), sort_keys=True)))


def job_identity(kind: str, cfg: Any, produced_by: dict[str, str] | None = None, dataset: str | None = None) -> dict:
    """The scientific identity of a job's config.

    Args:
        kind: "style", "generate" or "finetune".
        cfg: The job's resolved config.
        produced_by: Input key (e.g. "synthetic.path") -> id of the study job that produces it. An input path set
            without a producer is identified by its content where it is a file, else kept as given.
        dataset: The dataset's fingerprint when the caller has it (else `dataset_identity(cfg.data)`).
    """
    produced_by = produced_by or {}
    d = dataclasses.asdict(cfg)  # (OmegaConf's to_dict is ~100x slower; a study holds thousands of jobs)
    for key in VOLATILE[kind]:
        pop_key(d, key)
    for key in PRODUCED[kind]:
        value = pop_key(d, key)
        if key in produced_by:
            _put(d, key, {"job": produced_by[key]})
        elif value:  # set by hand in the study's overrides: an outside input
            _put(d, key, {"file": file_identity(value)} if Path(value).is_file() else {"path": value})
    for key in USER_FILES[kind]:
        value = pop_key(d, key)
        if value:
            _put(d, key, file_identity(value))
    d["data"]["fingerprint"] = dataset if dataset is not None else dataset_identity(cfg.data)
    if kind in ("style", "generate"):
        for key in _WEIGHT_SOURCE:
            d["generator"].pop(key, None)
        d["generator"]["weights"] = generator_identity(cfg.generator)
    return d


def identity_hash(identity: dict) -> str:
    """A short stable hash of an identity (the suffix of job ids)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


identity_diff = dict_diff  # the dotted keys whose values differ between two identities
