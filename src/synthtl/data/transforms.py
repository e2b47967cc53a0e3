"""Train/eval transforms built from the model's own data config (mean, std, size, interpolation, crop_pct).

Two paths: PIL transforms in loader workers (default), or `DeviceAugment`: a batch of JPEG byte strings is
decoded on the device (nvJPEG on CUDA) and cropped/resized/flipped/normalised there with one `roi_align` call.
Both draw crop boxes from the same RandomResizedCrop rule.
"""

from __future__ import annotations

import math

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS}


def _size(data_config: dict) -> int:
    return int(data_config["input_size"][-1])


def _interp(data_config: dict) -> InterpolationMode:
    return _INTERP.get(str(data_config.get("interpolation", "bilinear")), InterpolationMode.BILINEAR)


def train_transform(data_config: dict, crop_scale_min: float = 0.08, hflip: bool = True) -> T.Compose:
    """RandomResizedCrop + optional flip + normalise (docs/method.md's augmentation; nothing else)."""
    ops: list = [T.PILToTensor(), T.RandomResizedCrop(_size(data_config), scale=(crop_scale_min, 1.0),
                                                      interpolation=_interp(data_config), antialias=True)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(data_config["mean"], data_config["std"])]
    return T.Compose(ops)


def eval_transform(data_config: dict) -> T.Compose:
    """Resize to size / crop_pct, centre crop, normalise."""
    size = _size(data_config)
    resize = int(math.floor(size / float(data_config.get("crop_pct", 0.875))))
    return T.Compose([T.PILToTensor(), T.Resize(resize, interpolation=_interp(data_config), antialias=True),
                      T.CenterCrop(size), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(data_config["mean"], data_config["std"])])


def random_resized_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                       gen: torch.Generator | None = None) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box by torchvision's RandomResizedCrop rule (10 tries, then a centre crop)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen).item())
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0 = torch.randint(0, h - ch + 1, (1,), generator=gen).item()
            x0 = torch.randint(0, w - cw + 1, (1,), generator=gen).item()
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
    """Decodes a batch of JPEG byte tensors on `device` and applies the train or eval transform there.

    Args:
        data_config: The model's data config.
        device: Where to decode and augment (CUDA uses nvJPEG; CPU runs the same code, which the tests use).
        train: RandomResizedCrop + flip if true, else the eval centre crop.
    """

    def __init__(self, data_config: dict, device: torch.device, train: bool, crop_scale_min: float = 0.08,
                 hflip: bool = True):
        self.size = _size(data_config)
        self.device = device
        self.train = train
        self.scale = (crop_scale_min, 1.0)
        self.hflip = hflip
        self.crop_pct = float(data_config.get("crop_pct", 0.875))
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def __call__(self, jpegs: list[torch.Tensor]) -> torch.Tensor:
        images = decode_on(jpegs, self.device)
        hmax = max(im.shape[1] for im in images)
        wmax = max(im.shape[2] for im in images)
        batch = torch.empty(len(images), 3, hmax, wmax, device=self.device, dtype=torch.float32)
        boxes = torch.empty(len(images), 5, dtype=torch.float32)
        for i, im in enumerate(images):
            h, w = im.shape[1:]
            place(batch[i], im.to(self.device))
            if self.train:
                box = random_resized_box(h, w, self.scale, (3 / 4, 4 / 3))
            else:
                box = center_box(h, w, self.crop_pct)
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

    With aligned=True, roi_align's samples for a box that reaches the image's right (bottom) edge fall up to half
    a pixel past the last pixel centre, so bilinear interpolation also reads column w (row h). On its own image
    roi_align clamps there (the edge value, as torch's interpolate does); in a padded batch that column is the
    padding, so zeros would bleed into the last output row and column. Repeating the edge makes the padded
    image read exactly like the image alone; nothing further than one pixel past the edge is ever read.
    """
    _, h, w = im.shape
    slot[:, :h, :w] = im
    if w < slot.shape[2]:
        slot[:, :h, w:] = im[:, :, w - 1:w]
    if h < slot.shape[1]:
        slot[:, h:, :] = slot[:, h - 1:h, :]


def decode_on(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decodes JPEG byte tensors to uint8 (3, h, w) images on `device` (nvJPEG on CUDA), safely.

    nvJPEG's hardware decoder does not wait for work already queued on the stream it is given (pytorch/vision
    PR #9606, seen corrupting results on H100s): torchvision hands it output blocks from PyTorch's caching
    allocator, which may be memory that kernels still queued on the current stream (the last training step) are
    about to read, and the decoder overwrites it first. Draining the current stream before the decode closes that
    window; waiting for the decoder after it makes its outputs complete before any consumer kernel reads them,
    and record_stream keeps each output's memory from being reused until the consumer stream is done with it.
    """
    if device.type != "cuda":
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device="cpu")
    consumer = torch.cuda.current_stream(device)
    consumer.synchronize()  # a host barrier: the bug ignores stream order, so an event wait would not do
    images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    torch.cuda.synchronize(device)  # the decoder's own stream is not ordered with ours
    for im in images:
        im.record_stream(consumer)
    return images
