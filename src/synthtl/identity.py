"""What an output *is*, declared once: the identity of any stage's config, and the folder that holds it.

Each config field's metadata (`config.fields.key`) says how it enters its stage's identity: by value (default); not
at all (ignored: where files live, how fast, how shown); by what it holds (content: a file, the dataset, generator or
scorer weights; a section may swap a content kind: a generated set depends on the class names only); or by another
stage's output (producer: set, style, filter), i.e. the hash in its identity.json or, before it exists, the hash the
study computed for its job. Both are the same number, so a job file run by hand is the same job.

Every output folder holds one identity.json: {"kind", "hash", "identity"}. `check` refuses another identity, naming
the keys that differ; `claim` writes the file. A study's job id ends with the hash. Nothing depends on where files
live, so a moved study, dataset or run is the same."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from synthtl.errors import ConfigError, DataError
from synthtl.files import content_sha256, read_json, write_json

IDENTITY = "identity.json"
KIND_NAMES = {"finetune": "a fine-tuning run", "style": "a style", "generate": "a generated set", "filter": "a filter"}


class Resolver:
    """Turns content and producer fields into what they hold; one per study expansion or stage run (it memoizes).

    `missing`, when given, records an absent dataset (name -> why) identified as "not-present" instead of raising (a
    dry run plans before the data is fetched; generation needs only the shipped class names)."""

    def __init__(self, missing: dict[str, str] | None = None):
        self.missing = missing
        self._seen: dict[tuple, Any] = {}

    def content(self, of: str, key: str, value: Any, section: Any) -> Any:
        if of in ("dataset", "classes"):
            where = (section.root, section.train_dir, section.test_dir, section.train_csv, section.test_csv)
            return self._once((of, section.name, *where, section.cache_dir), lambda: self._data(of, section))
        if of == "generator":
            return self._once(("generator", repr(section)), lambda: generator_weights(section))
        if not value:
            return value
        if of == "file":
            return file_identity(value, key)
        if of == "scorer":
            return self._once(("scorer", value), lambda: scorer_weights(value))
        raise ValueError(f"unknown content kind {of!r} of {key}")

    def producer(self, of: str, key: str, value: Any, root: Any) -> Any:
        folder = Path(root.synthetic.path) / "filters" / value if of == "filter" else Path(value)  # filter: of its set
        if of in ("set", "style") and not (folder / IDENTITY).is_file():
            return outside_input(value, key)
        record = held(folder)
        if record is None:
            fix = (f"run `synthtl filter {root.synthetic.path} name={value} ...` first" if of == "filter" else
                   "make it first (or point at a finished one)")
            raise DataError(f"{key}={value!r}: {folder} holds no finished output of synthtl ({IDENTITY} is missing); "
                            f"{fix}")
        return record["hash"]

    def _once(self, key: tuple, compute) -> Any:
        if key not in self._seen:
            self._seen[key] = compute()
        return self._seen[key]

    def _data(self, of: str, data: Any) -> Any:
        """The dataset's fingerprint, or its class names (a registered dataset's shipped ones, present or not)."""
        from synthtl.data.datasets import DATASETS, classnames, dataset_fingerprint, load_data

        if of == "classes" and data.name in DATASETS:
            return classnames(data.name)
        try:
            if of == "dataset":
                return dataset_fingerprint(data)
            return list(load_data(data, "train", download=False).names)
        except DataError as e:
            if self.missing is None:
                raise
            self.missing.setdefault(data.name, str(e))
            return "not-present" if of == "dataset" else ["not-present"]


def identity(cfg: Any, resolver: Resolver | None = None, produced: dict[str, str] | None = None) -> dict:
    """A stage config's identity, nested like the config, by each field's declaration (module doc). `resolver` is
    shared across one study; `produced`: dotted key -> hash of the study job making that input (may not exist yet)."""
    resolver, produced = resolver or Resolver(), produced or {}

    def walk(section: Any, prefix: str, swap: dict) -> dict:
        out = {}
        for f in fields(section):
            key, value, how = prefix + f.name, getattr(section, f.name), f.metadata.get("identity")
            if how == "ignored":
                continue
            if is_dataclass(value):
                out[f.name] = walk(value, key + ".", f.metadata.get("swap", {}))
            elif how == "content":
                of = f.metadata["of"]
                out[f.name] = resolver.content(swap.get(of, of), key, value, section)
            elif how == "producer":
                out[f.name] = produced.get(key) or resolver.producer(f.metadata["of"], key, value, cfg) if value \
                    else value
            else:
                out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    return walk(cfg, "", {})


def digest(ident: Any) -> str:
    """A short stable hash of an identity (identity.json's "hash"; the suffix of a study's job ids)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b": value}: the one dotted-key helper."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def differing(old: dict, new: dict) -> list[str]:
    a, b = flat(old), flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def refusal(folder: Path, what: str, keys: list[str], old: dict, new: dict, shown: int = 5) -> ConfigError:
    """The one refusal of a folder that holds another output: the keys that differ, with both values."""
    a, b = flat(old), flat(new)
    parts = [f"{k} ({_short(a.get(k))} there, {_short(b.get(k))} now)" for k in keys[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ConfigError(f"{folder} holds {what} made with another config: {', '.join(parts)}{more}. Use another "
                       "out_dir, or delete that folder to start over")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def held(folder: Path) -> dict | None:
    """The folder's identity.json, or None."""
    f = Path(folder) / IDENTITY
    if not f.is_file():
        return None
    try:
        record = read_json(f)
        record["hash"], record["identity"]  # noqa: B018 - both keys must be there
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{f} is damaged; delete {folder} to start over") from None
    return record


def check(folder: Path, kind: str, ident: dict) -> bool:
    """Whether the folder holds this output (True) or none yet (False); ConfigError (`refusal`) if another."""
    record = held(folder)
    if record is None:
        return False
    if record.get("kind") != kind:
        raise ConfigError(f"{folder} holds {KIND_NAMES.get(record.get('kind'), 'another output')}, not "
                          f"{KIND_NAMES[kind]}; use another folder")
    if record["hash"] != digest(ident):
        raise refusal(folder, KIND_NAMES[kind], differing(record["identity"], ident), record["identity"], ident)
    return True


def claim(folder: Path, kind: str, ident: dict) -> None:
    """Records which output a folder holds (identity.json), unless it already holds it; refuses another one."""
    if not check(folder, kind, ident):
        write_json(Path(folder) / IDENTITY, {"kind": kind, "hash": digest(ident), "identity": ident})


# ---------------------------------------------------------------------------------------------- content identities
def file_identity(path: str, key: str = "") -> str:
    if Path(path).is_dir():
        raise DataError(f"{key or 'input'}={path!r} is a folder: give the file in it")
    try:
        return "sha256:" + content_sha256(path)[:16]
    except OSError:
        raise DataError(f"{key or 'input'}={path!r} does not exist or cannot be read; fix the path") from None


def outside_input(value: str, key: str) -> str:
    """An input that synthtl did not make (an image folder, a style file from elsewhere): its files' content."""
    p = Path(value)
    if p.is_file():
        parent = held(p.parent)  # a file of a synthtl output (e.g. its learned_embeds.safetensors): that output
        return parent["hash"] if parent else file_identity(value, key)
    if not p.is_dir():
        raise DataError(f"{key}={value!r} does not exist; fix the path")
    if (p / "plan.json").is_file():
        raise DataError(f"{key}={value!r} is a generated set without {IDENTITY} (unfinished planning, or made by "
                        "another version of synthtl); run `synthtl generate` on it again")
    return "files:" + hash_files(_files_in(p))[:16]


def _files_in(folder: Path) -> list[tuple[str, Path]]:
    """(name inside the folder, file) of every file that can change what it holds: hidden files (caches, locks,
    synthtl's own temp files) and docs are left out, names are relative so the folder can move."""
    rels = ((p.relative_to(folder), p) for p in sorted(folder.rglob("*")))
    return [(rel.as_posix(), p) for rel, p in rels
            if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.suffix != ".md"]


def hash_files(files: list[tuple[str, Path]]) -> str:
    """sha256 over (name, content sha256) of each file; contents are hashed once (`files.content_sha256`)."""
    h = hashlib.sha256()
    for name, p in sorted(files, key=lambda x: x[0]):
        h.update(f"{name}\0{content_sha256(p)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def weights_identity(source: str, revision: str = "", extra: str = "") -> dict:
    """What identifies model weights, never where they live: a local file or folder by the content of its files (and
    of `extra`, a config folder), a hub id by its snapshot commit."""
    path = Path(source).expanduser()
    if path.is_file() or path.is_dir():
        files = [(path.name, path)] if path.is_file() else _files_in(path)
        if extra and Path(extra).is_dir():
            files += _files_in(Path(extra))
        return {"model": "local", "revision": "local-" + hash_files(files)[:16]}
    if not re.fullmatch(r"[0-9a-f]{40}", revision):  # a ref: the commit it points at in the local cache
        try:
            from huggingface_hub import snapshot_download

            where = snapshot_download(source, revision=revision or None, local_files_only=True)
            snap = re.search(r"snapshots/([0-9a-f]{40})", Path(where).as_posix())
        except Exception:  # not downloaded (or not a hub id): loading it gives the clear error
            snap = None
        revision = snap.group(1) if snap else (revision or "main")
    return {"model": source, "revision": revision}


def generator_weights(gen: Any) -> dict:
    """The generator's weights (`generator.model`, with `revision`, `single_file_config`, `tiny_seed`)."""
    if gen.model == "tiny":
        from synthtl.generation.pipeline import tiny_revision

        return {"model": "tiny", "revision": tiny_revision(gen.tiny_seed)}
    return weights_identity(gen.model, gen.revision, gen.single_file_config if Path(gen.model).is_file() else "")


def scorer_weights(model: str) -> dict:
    """A filter's CLIP (`clip.model`): a transformers folder or hub id, or "open_clip:<arch>/<weights file or tag>"."""
    if model.startswith("open_clip:"):
        arch, _, weights = model.removeprefix("open_clip:").partition("/")
        return {"open_clip": arch, "weights": file_identity(weights) if Path(weights).is_file() else weights}
    return weights_identity(model)
