"""data.decode=device: nvJPEG decode + roi_align crops on the GPU equal the CPU path, batch after batch, while the
caching allocator is recycling memory that queued kernels still read (the pattern of pytorch/vision PR #9606)."""

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg, encode_jpeg

from synthtl.data.transforms import DeviceAugment, decode_on
from tests.gpu.conftest import needs_cuda

pytestmark = needs_cuda

BATCHES = 200
PIXELS = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255), "crop_pct": 0.875, "input_size": (3, 224, 224)}


def smooth_jpegs(n: int, seed: int = 0) -> list[torch.Tensor]:
    """Photo-like JPEGs of mixed sizes (smooth content: nvJPEG and libjpeg agree to a level or two)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (256, 256) if i % 3 else (320, 256)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
        out.append(encode_jpeg(torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous(), quality=90))
    return out


def pressure(nbytes: int, count: int) -> tuple[list[torch.Tensor], list[float]]:
    """Queues a long kernel, then reductions over freshly written tensors, and frees those tensors while the
    reductions are still queued: their blocks go back to the allocator and are handed to the next allocation."""
    victims = [torch.full((nbytes // 4,), float(k + 1), device="cuda") for k in range(count)]
    torch.cuda.synchronize()
    torch.cuda._sleep(20_000_000)  # ~10 ms of queued work ahead of the reductions
    sums = [v.sum() for v in victims]
    expected = [float(k + 1) * (nbytes // 4) for k in range(count)]
    del victims
    return sums, expected


def test_device_decode_equals_cpu_decode_under_memory_pressure():
    jpegs = smooth_jpegs(16)
    ref = [decode_jpeg(j) for j in jpegs]
    cpu_aug = DeviceAugment(PIXELS, torch.device("cpu"), train=False)
    gpu_aug = DeviceAugment(PIXELS, torch.device("cuda"), train=False)
    cpu_out = [cpu_aug(jpegs[k:k + 8]) for k in (0, 8)]
    corrupt_batches, bad_victims = [], 0
    for b in range(BATCHES):
        part = b % 2
        batch = jpegs[part * 8:(part + 1) * 8]
        sums, expected = pressure(3 * 256 * 256, 8)  # blocks the size of a decoded image
        images = decode_on(batch, torch.device("cuda"))
        out = gpu_aug(batch)
        torch.cuda.synchronize()
        bad_victims += sum(abs(float(s) - e) > 0.5 for s, e in zip(sums, expected, strict=True))
        decoded_ok = all((im.cpu().int() - r.int()).abs().float().mean() < 2.0
                         for im, r in zip(images, ref[part * 8:(part + 1) * 8], strict=True))
        diff = (out.cpu() - cpu_out[part]).abs()
        if not decoded_ok or diff.mean() > 2.0 or diff.max() > 40:
            corrupt_batches.append(b)
    assert bad_victims == 0, f"the decoder overwrote memory still being read in {bad_victims} reductions"
    assert corrupt_batches == [], f"{len(corrupt_batches)}/{BATCHES} batches differ from the CPU decode"


def test_device_augment_train_mode_is_finite_and_in_range():
    jpegs = smooth_jpegs(32, seed=1)
    aug = DeviceAugment(PIXELS, torch.device("cuda"), train=True)
    for _ in range(20):
        out = aug(jpegs)
        assert out.shape == (32, 3, 224, 224) and out.device.type == "cuda"
        assert torch.isfinite(out).all() and out.min() >= -0.5 and out.max() <= 255.5
