"""A generated set written by hand in the format `data.genset` owns, without a generator: fast fixtures for readers."""

import json
from pathlib import Path

from synthtl import identity
from synthtl.data.cache import resized_jpeg
from synthtl.data.genset import PROGRESS_DIR, class_table, row_id, write_or_extend
from synthtl.data.images import load_rgb
from synthtl.files import write_bytes, write_json

SETTINGS = {"format": 1, "model": "tiny", "revision": "tiny-0", "scheduler": "ddim", "steps": 1, "guidance": 2.0,
            "height": 32, "width": 32, "dtype": "float32", "templates": ["a good photo of the {}."], "suffix": "",
            "negative": "", "style_hash": "", "seed": 0, "image_format": "jpeg", "quality": 95, "train_copy": 0}


def fake_set(root: Path, classes: list[str], per_class: int, done: set[tuple[int, int]],
             redrawn: dict[tuple[int, int], int] | None = None, source=None, train_copy: int = 0) -> Path:
    """A set of `classes` (folder ids; names with spaces) planned at `per_class`, with the images `done` ((class index,
    image index)) logged and written; `redrawn` gives the redraw count of some of them; `source(c, i)`, when given,
    is the file each image copies (else a few placeholder bytes); with `train_copy` (and `source`), each image also
    gets its training copy as the generator writes it."""
    names = [c.replace("_", " ") for c in classes]
    prompts = [[{"prompt": f"a good photo of the {n}.", "template": 0, "truncated": False,
                 "requested_prompt": f"a good photo of the {n}."}] for n in names]
    table = class_table(list(zip(classes, names, strict=True)), prompts, [""] * len(classes))
    rows = write_or_extend(root, {**SETTINGS, "classes": names, "train_copy": train_copy}, table, per_class)
    write_json(root / identity.IDENTITY, {"kind": "generate", "hash": "fake" + root.name[:8], "identity": {}})
    lines = []
    for c, i in sorted(done):
        path = root / rows.rel_path(rows.position(c, i))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source(c, i).read_bytes() if source else b"jpeg")
        if train_copy:
            write_bytes(root / rows.rel_path(rows.position(c, i), "train_path"),
                        resized_jpeg(load_rgb(source(c, i)), train_copy))
        n = (redrawn or {}).get((c, i), 0)
        lines.append(json.dumps({"id": row_id(c, i), "seed": 1000 * c + i + n, "redraws": n}) + "\n")
    (root / PROGRESS_DIR / "shard-0000-of-0001.jsonl").write_text("".join(lines))
    return root


def load_synthetic(*args, **kwargs):
    """The images of `data.synthetic.load_synthetic_set` (without its record)."""
    from synthtl.data.synthetic import load_synthetic_set

    return load_synthetic_set(*args, **kwargs)[0]
