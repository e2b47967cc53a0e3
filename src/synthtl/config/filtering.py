"""The filter config (`synthtl filter`; ours, beyond the paper: He et al. ICLR'23, DISEF, ALIA, SaSPA)."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthtl.config.fields import check, check_filter_name, key


@dataclass(frozen=True)
class ClipFilterConfig:
    model: str = key("openai/clip-vit-base-patch32", 'transformers CLIP (hub id or local folder), or '
                     '"open_clip:<arch>/<weights file or tag>"', content="scorer")
    template: str = key("a photo of a {}.", "zero-shot prompt of each class; {} = the class name")

    def __post_init__(self) -> None:
        check(self.template.count("{}") == 1, f"clip.template={self.template!r}: needs exactly one {{}} for the "
              "class name, e.g. 'a photo of a {}.'")


@dataclass(frozen=True)
class ClassifierFilterConfig:
    run: str = key("", "a finished `synthtl finetune` run on real images only (e.g. vanilla)", producer="run")
    data_root: str = key("", "where the run's dataset lives now, if not at its data.root (its class order)",
                         ignored=True)


@dataclass(frozen=True)
class KeepConfig:
    top_k: int = key(0, "keep the k best-scored images of each class (ties: the lower image index wins)", ge=0)
    # NaN compares false with every score (it would keep nothing) and is not JSON: check_values refuses it
    threshold: float | None = key(None, "keep every image whose score is strictly above this value (null = not "
                                  "this rule)")
    fraction: float = key(0.0, "keep the best ceil(fraction * n) images of each class (0 = not this rule)", ge=0, le=1)

    def __post_init__(self) -> None:
        chosen = [f"keep.{k}={v}" for k, v, used in (("top_k", self.top_k, self.top_k > 0),
                                                     ("threshold", self.threshold, self.threshold is not None),
                                                     ("fraction", self.fraction, self.fraction > 0)) if used]
        check(len(chosen) <= 1, f"{' and '.join(chosen)} are both set: keep one rule (reset the other, e.g. "
              "keep.fraction=0 or keep.threshold=null)")

    @property
    def rule(self) -> str:
        """The rule in use: "top_k", "threshold", "fraction", or "" when none is set."""
        used = {"top_k": self.top_k, "threshold": self.threshold is not None, "fraction": self.fraction}
        return next((rule for rule, on in used.items() if on), "")


@dataclass(frozen=True)
class FilterConfig:
    set_dir: str = key("", "the generated set to filter (`synthtl filter <set>`)", producer="set")
    name: str = key("", 'the filter\'s folder <set>/filters/<name>; "" = the method\'s name', ignored=True)
    method: str = key("clip", '"clip": zero-shot CLIP on the class names; "classifier": a run fine-tuned on real '
                      "images", one_of=("clip", "classifier"))
    score: str = key("prob", '"prob": softmax probability of the image\'s own class; "logit": its logit',
                     one_of=("prob", "logit"))
    batch_size: int = key(64, "images per forward pass", ignored=True, ge=1)
    workers: int = key(4, "threads decoding images while the model scores the previous batch", ignored=True, ge=1)
    device: str = key("auto", '"auto", "cpu", "cuda", "cuda:1" (scores are computed in fp32)', ignored=True)
    progress: bool = key(True, "progress bars", ignored=True)
    per_class: list[int] = key(factory=list, ignored=True, ge=1, help="volumes to write kept lists for (kept/<V>.json: "
                               "the rule on the first V images of each class); [] = the whole set (its per_class)")
    clip: ClipFilterConfig = field(default_factory=ClipFilterConfig)
    classifier: ClassifierFilterConfig = field(default_factory=ClassifierFilterConfig)
    keep: KeepConfig = field(default_factory=KeepConfig)

    def __post_init__(self) -> None:
        check_filter_name(self.name or self.method, "name")
        t = self.keep.threshold
        # a probability is in [0, 1] and keep.threshold keeps scores strictly above it: 1 or more keeps nothing
        check(self.score != "prob" or t is None or 0.0 <= t < 1.0,
              f"keep.threshold={t} with score=prob (a probability) keeps nothing or everything: use a value in "
              "[0, 1), or score=logit for a threshold on logits")
