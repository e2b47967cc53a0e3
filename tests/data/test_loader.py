import torch
from PIL import Image

from synthtl.data.cache import scan_images
from synthtl.data.datasets import load_split
from synthtl.data.loader import EpochBatchSampler, ImageDataset, collate, steps_per_epoch
from synthtl.data.transforms import DeviceAugment, center_box, eval_transform, train_transform

DC = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0,
      "interpolation": "bilinear"}


def test_steps_per_epoch_drops_only_a_lone_last_image():
    assert steps_per_epoch(64, 64) == 1 and steps_per_epoch(65, 64) == 1 and steps_per_epoch(66, 64) == 2
    assert steps_per_epoch(12, 64) == 1 and steps_per_epoch(128, 64) == 2


def test_sampler_order_depends_only_on_seed_and_epoch():
    s = EpochBatchSampler([20], 6, seed=1)
    s.set_epoch(3)
    a = list(s)
    s.set_epoch(0)
    s.set_epoch(3)
    assert list(s) == a and sorted(i for b in a for i, _ in b) == list(range(20)) and len(s) == 4
    assert len({seed for b in a for _, seed in b}) == 20  # every sample gets its own augmentation seed
    s.set_epoch(4)
    assert list(s) != a


def test_mixed_fraction_composes_each_epoch():
    s = EpochBatchSampler([30, 100], 10, seed=0, fraction=0.25)
    order = s.order()
    assert len(order) == 40 and sum(i < 30 for i in order) == 30 and len(set(order)) == 40
    both = EpochBatchSampler([30, 100], 10, seed=0)
    assert len(both.order()) == 130


def test_seeded_samples_get_the_same_augmentation_anywhere(folder_data):
    images = load_split("folder", "train", folder_data)
    ds = ImageDataset(images, train_transform(DC))
    a, b = ds[(3, 12345)][0], ds[(3, 12345)][0]
    assert torch.equal(a, b) and not torch.equal(a, ds[(3, 54321)][0])


def test_collate_drops_and_counts_skipped():
    x, y, skipped = collate([(torch.zeros(3, 2, 2), 1), None, (torch.ones(3, 2, 2), 0)])
    assert x.shape == (2, 3, 2, 2) and y.tolist() == [1, 0] and skipped == 1


def test_dataset_skip_mode_yields_none(tmp_path, folder_data):
    train = load_split("folder", "train", folder_data)
    train.path(0).write_text("broken")
    ds = ImageDataset(train, eval_transform(DC), on_bad="skip")
    assert ds[0] is None and ds[1][0].shape == (3, 32, 32)


def test_transforms_shapes_and_normalisation():
    img = Image.new("RGB", (50, 40), (128, 128, 128))
    t = train_transform(DC)(img)
    e = eval_transform(DC)(img)
    assert t.shape == e.shape == (3, 32, 32)
    assert torch.allclose(e, torch.full_like(e, (128 / 255 - 0.5) / 0.25), atol=1e-3)


def test_device_augment_matches_pil_eval_path(tmp_path, folder_data):
    res = scan_images(load_split("folder", "test", folder_data), tmp_path / "c", short_side=40, progress=False)
    raw = ImageDataset(res.images, raw=True)
    pil = ImageDataset(res.images, eval_transform(DC))
    jpegs, labels, _ = collate([raw[i] for i in range(4)])
    out = DeviceAugment(DC, torch.device("cpu"), train=False)(jpegs)
    ref = torch.stack([pil[i][0] for i in range(4)])
    assert out.shape == ref.shape == (4, 3, 32, 32)
    assert (out - ref).abs().mean() < 0.05  # same crop, different (antialiased) resampling
    torch.manual_seed(0)
    aug = DeviceAugment(DC, torch.device("cpu"), train=True)(jpegs)
    assert aug.shape == (4, 3, 32, 32) and torch.isfinite(aug).all()
    assert center_box(40, 48, 1.0) == (4.0, 0.0, 44.0, 40.0)
