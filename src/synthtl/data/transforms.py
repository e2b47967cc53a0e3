"""Train/eval transforms built from the model's own data config (mean, std, size, interpolation, crop_pct): PIL
transforms in loader workers (default), or `DeviceAugment`, which decodes a batch of JPEGs on the device and crops,
resizes, flips and normalises it there with one `roi_align` call. Both draw crop boxes by the same rule."""

from __future__ import annotations

import math

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS}


def _size_interp(data_config: dict) -> tuple[int, InterpolationMode]:
    interp = _INTERP.get(str(data_config.get("interpolation", "bilinear")), InterpolationMode.BILINEAR)
    return int(data_config["input_size"][-1]), interp


def train_transform(data_config: dict, crop_scale_min: float = 0.08, hflip: bool = True) -> T.Compose:
    """RandomResizedCrop + optional flip + normalise (docs/method.md's augmentation; nothing else)."""
    size, interp = _size_interp(data_config)
    crop = T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), interpolation=interp, antialias=True)
    return T.Compose([T.PILToTensor(), crop, *([T.RandomHorizontalFlip()] if hflip else []),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(data_config["mean"], data_config["std"])])


def eval_transform(data_config: dict) -> T.Compose:
    """Resize to size / crop_pct, centre crop, normalise."""
    size, interp = _size_interp(data_config)
    resize = int(math.floor(size / float(data_config.get("crop_pct", 0.875))))
    return T.Compose([T.PILToTensor(), T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(data_config["mean"], data_config["std"])])


def random_resized_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[float, ...]:
    """An (x0, y0, x1, y1) box by torchvision's RandomResizedCrop rule (10 tries, then a centre crop)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = torch.randint(0, h - ch + 1, (1,)).item()
            x0 = torch.randint(0, w - cw + 1, (1,)).item()
            return float(x0), float(y0), float(x0 + cw), float(y0 + ch)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return float(x0), float(y0), float(x0 + cw), float(y0 + ch)


def center_box(h: int, w: int, crop_pct: float) -> tuple[float, float, float, float]:
    """The region that `eval_transform` keeps (resize short side to size/crop_pct, centre crop size)."""
    side = min(h, w) * crop_pct
    y0, x0 = (h - side) / 2, (w - side) / 2
    return x0, y0, x0 + side, y0 + side


class DeviceAugment:
    """Decodes a batch of JPEG byte tensors on `device` (CUDA uses nvJPEG; the CPU runs the same code) and applies
    there the train (RandomResizedCrop + flip) or the eval (centre crop) transform."""

    def __init__(self, data_config: dict, device: torch.device, train: bool, crop_scale_min: float = 0.08,
                 hflip: bool = True):
        self.size = _size_interp(data_config)[0]
        self.device = device
        self.train = train
        self.scale = (crop_scale_min, 1.0)
        self.hflip = hflip
        self.crop_pct = float(data_config.get("crop_pct", 0.875))
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, jpegs: list[torch.Tensor]) -> torch.Tensor:
        images = decode_on(jpegs, self.device)
        hmax, wmax = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
        batch = torch.empty(len(images), 3, hmax, wmax, device=self.device, dtype=torch.float32)
        boxes = torch.empty(len(images), 5, dtype=torch.float32)
        for i, im in enumerate(images):
            h, w = im.shape[1:]
            place(batch[i], im.to(self.device))
            box = (random_resized_box(h, w, self.scale, (3 / 4, 4 / 3)) if self.train
                   else center_box(h, w, self.crop_pct))
            boxes[i] = torch.tensor([i, *box])
        # roi_align averages sampling_ratio^2 bilinear samples per output pixel: an antialiased crop+resize.
        out = roi_align(batch, boxes.to(self.device), output_size=self.size, spatial_scale=1.0,
                        sampling_ratio=2, aligned=True)
        if self.train and self.hflip:
            flip = torch.rand(len(images)) < 0.5
            out[flip.to(self.device)] = out[flip.to(self.device)].flip(-1)
        return (out - self.mean) / self.std


def place(slot: torch.Tensor, im: torch.Tensor) -> None:
    """Copies a (3, h, w) image into the top-left of a larger (3, H, W) batch slot, edge pixels repeated beyond it.
    With aligned=True, roi_align's samples for a box that reaches the image's right (bottom) edge fall up to half a
    pixel past the last pixel centre, so bilinear interpolation also reads column w (row h): roi_align clamps there on
    a lone image, but in a padded batch zeros would bleed into the last output row and column. Repeating the edge
    makes the padded image read exactly like the image alone."""
    _, h, w = im.shape
    slot[:, :h, :w] = im
    slot[:, :h, w:] = im[:, :, w - 1:w]  # empty when the image fills the slot
    slot[:, h:, :] = slot[:, h - 1:h, :]


def decode_on(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decodes JPEG byte tensors to uint8 (3, h, w) images on `device` (nvJPEG on CUDA), safely: nvJPEG's hardware
    decoder does not wait for work queued on its stream (pytorch/vision PR #9606, seen corrupting results on H100s),
    so it may overwrite memory from PyTorch's caching allocator that kernels still queued on the current stream (the
    last training step) are about to read. Draining the current stream before the decode closes that window; waiting
    for the decoder after it completes its outputs before any consumer kernel reads them, and record_stream keeps each
    output's memory from being reused until the consumer stream is done with it."""
    if device.type != "cuda":
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device="cpu")
    consumer = torch.cuda.current_stream(device)
    consumer.synchronize()  # a host barrier: the bug ignores stream order, so an event wait would not do
    images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    torch.cuda.synchronize(device)  # the decoder's own stream is not ordered with ours
    for im in images:
        im.record_stream(consumer)
    return images
