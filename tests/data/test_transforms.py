"""DeviceAugment (batched decode + roi_align crops) on CPU: the same code path the GPU runs."""

import pytest
import torch
from torchvision.io import encode_jpeg

from synthtl.data.transforms import DeviceAugment, decode_on, eval_transform

# mean 0, std 1/255: the output is the pixel value itself (what the image holds before normalisation)
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255), "crop_pct": 1.0}


def constant_jpeg(value: int, h: int, w: int) -> torch.Tensor:
    return encode_jpeg(torch.full((3, h, w), value, dtype=torch.uint8), quality=100)


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("train", [False, True])
def test_constant_images_stay_constant_to_the_last_row_and_column(size, train):
    # Images of different sizes share one zero-padded batch: before the fix, crops that reach the right or
    # bottom edge of the smaller image read the padding (the last column of a 200-valued image read 69-178).
    dc = {**IDENTITY, "input_size": (3, size, size)}
    values = (200, 90, 200, 17)
    jpegs = [constant_jpeg(values[0], 40, 40), constant_jpeg(values[1], 64, 80), constant_jpeg(values[2], 50, 30),
             constant_jpeg(values[3], 30, 50)]
    torch.manual_seed(0)
    for _ in range(5 if train else 1):  # several random boxes, some reach an edge (crop scale up to 1)
        out = DeviceAugment(dc, torch.device("cpu"), train=train, crop_scale_min=0.9)(jpegs)
        assert out.shape == (4, 3, size, size)
        for i, v in enumerate(values):
            assert torch.allclose(out[i], torch.full_like(out[i], float(v)), atol=1e-3), (i, out[i].min(), out[i].max())
            assert torch.allclose(out[i, :, -1, :], torch.full_like(out[i, :, -1, :], float(v)), atol=1e-3)
            assert torch.allclose(out[i, :, :, -1], torch.full_like(out[i, :, :, -1], float(v)), atol=1e-3)


def test_an_image_reads_the_same_alone_and_in_a_padded_batch():
    """The padding must be invisible: a textured image crops identically whatever it is batched with."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 36, 44), generator=g, dtype=torch.uint8)
    jpeg = encode_jpeg(img, quality=100)
    dc = {**IDENTITY, "input_size": (3, 64, 64)}
    aug = DeviceAugment(dc, torch.device("cpu"), train=False)
    alone = aug([jpeg])[0]
    batched = aug([jpeg, constant_jpeg(0, 72, 90)])[0]
    assert torch.allclose(alone, batched, atol=1e-4)


def test_eval_crop_matches_the_pil_path_on_a_smooth_image():
    """Same region as eval_transform (resize + centre crop), up to interpolation differences."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    img = torch.stack([xs * 255, ys * 255, (xs + ys) * 127]).round().to(torch.uint8)
    dc = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.875, "input_size": (3, 32, 32)}
    ours = DeviceAugment(dc, torch.device("cpu"), train=False)([encode_jpeg(img, quality=100)])[0]
    from torchvision.transforms.functional import to_pil_image

    ref = eval_transform(dc)(to_pil_image(img))
    assert (ours - ref).abs().mean() < 0.03  # a 1/255 step is 0.016 here


def test_cpu_decode_returns_rgb_uint8():
    images = decode_on([constant_jpeg(120, 10, 12)], torch.device("cpu"))
    assert len(images) == 1 and images[0].shape == (3, 10, 12) and images[0].dtype == torch.uint8
