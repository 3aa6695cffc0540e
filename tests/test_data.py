"""Datamodules and the batch pipeline, against torchvision's own transforms and files in the
real CIFAR-10 format."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.datasets.utils import calculate_md5

from normlab.bench.cifar_files import write_cifar10
from normlab.data import (
    BatchTransform,
    CIFAR10DataModule,
    DigitsDataModule,
    SyntheticDataModule,
    TensorBatchLoader,
)
from normlab.data import cifar10 as cifar10_module
from normlab.data.base import count_or_fraction
from normlab.data.batches import crop_and_flip
from normlab.data.synthetic import make_synthetic
from normlab.errors import DataError


def test_cifar10_reads_the_real_format_into_nchw_uint8(tmp_path):
    write_cifar10(tmp_path, train_images=200, test_images=60)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, verify_checksums=False, val_size=50)
    full_train, test = dm.load()
    # The writer stores make_synthetic's images as CIFAR rows (1024 red, 1024 green, 1024 blue
    # values, each a 32x32 image row-major); reading them back must give the same tensors.
    expected_train, expected_test = (
        make_synthetic(200, 10, 32, seed=1),
        make_synthetic(60, 10, 32, seed=2),
    )
    assert torch.equal(full_train.images, expected_train.images)
    assert torch.equal(full_train.labels, expected_train.labels)
    assert torch.equal(test.images, expected_test.images)
    assert full_train.images.dtype == torch.uint8 and len(test) == 60

    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (150, 50, 60)
    assert dm.class_names[0] == "plane" and dm.num_classes == 10


def test_validation_split_is_fixed_by_split_seed_not_run_seed(fake_cifar10):
    def val_labels(**kwargs):
        dm = CIFAR10DataModule(
            root=str(fake_cifar10), download=False, verify_checksums=False, val_size=50, **kwargs
        )
        dm.setup()
        return dm.val_set.images

    assert torch.equal(val_labels(seed=0), val_labels(seed=5))
    assert not torch.equal(val_labels(split_seed=0), val_labels(split_seed=1))


def test_missing_cifar10_without_download_names_folder_and_three_ways_out(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), download=False, val_size=10)
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert (
        "cifar-10-python.tar.gz" in message and "data.root" in message and "data=digits" in message
    )


def test_missing_cifar10_says_how_to_unpack_the_jpeg_copy(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), download=False, val_size=10)
    with pytest.raises(DataError) as err:
        dm.setup()
    assert f"tar -xzf cifar10-jpeg.tar.gz -C {tmp_path / 'data'}/" in str(err.value)
    assert "data=cifar10_jpeg" in str(err.value)


def test_missing_cifar10_points_to_the_jpeg_copy_beside_it(tmp_path):
    # data=cifar10 where data=cifar10_jpeg's folder is already unpacked: that is the way out.
    (tmp_path / "data" / "cifar10-jpeg" / "train" / "cat").mkdir(parents=True)
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), download=False, val_size=10)
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert f"unpacked in {tmp_path / 'data' / 'cifar10-jpeg'}" in message
    assert "python train.py data=cifar10_jpeg" in message and "tar -xzf" not in message


def test_failed_download_gives_the_same_advice(tmp_path, monkeypatch):
    # Port 9 on the loopback interface refuses at once: a download that cannot succeed.
    monkeypatch.setattr(cifar10_module, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), download=True, val_size=10)
    with pytest.raises(DataError, match="download failed.*data=digits"):
        dm.setup()


def test_corrupt_file_is_named_by_checksum_verification(fake_cifar10):
    dm = CIFAR10DataModule(
        root=str(fake_cifar10), download=False, verify_checksums=True, val_size=10
    )
    with pytest.raises(DataError, match=r"data_batch_1 is corrupt \(its md5"):
        dm.setup()


def test_truncated_pickle_gives_a_clear_error_not_a_pickle_traceback(fake_cifar10):
    batch = fake_cifar10 / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    dm = CIFAR10DataModule(
        root=str(fake_cifar10), download=False, verify_checksums=False, val_size=10
    )
    with pytest.raises(DataError, match="could not be read.*corrupt"):
        dm.setup()


def test_verified_checksums_are_remembered(tmp_path, monkeypatch):
    write_cifar10(tmp_path, train_images=200, test_images=60)
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(
        cifar10_module,
        "CHECKSUMS",
        {name: calculate_md5(str(folder / name)) for name in cifar10_module.CHECKSUMS},
    )
    cifar10_module.verify_checksums(folder)
    assert (folder / cifar10_module.STAMP).exists()
    calls = []
    monkeypatch.setattr(cifar10_module, "check_md5", lambda *args: calls.append(args) or False)
    cifar10_module.verify_checksums(folder)  # unchanged files: no hashing
    assert calls == []
    (folder / "test_batch").write_bytes(b"changed")
    with pytest.raises(DataError):
        cifar10_module.verify_checksums(folder)


def test_digits_are_real_32x32_rgb_images_with_fixed_splits():
    dm = DigitsDataModule()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1257, 180, 360)
    assert dm.train_set.images.shape[1:] == (3, 32, 32) and dm.train_set.images.dtype == torch.uint8
    assert dm.train_set.images.max() > 200  # ink reaches near-white after rescaling 0..16
    assert set(dm.test_set.labels.tolist()) == set(range(10))
    again = DigitsDataModule(split_seed=0, seed=3)
    again.setup()
    assert torch.equal(dm.test_set.labels, again.test_set.labels)


# --- the batch pipeline ------------------------------------------------------------------

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_normalization_equals_torchvision_per_image_pipeline():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ours = BatchTransform(MEAN, STD)(images)
    theirs = torch.stack(
        [TF.normalize(TF.to_dtype(img, torch.float32, scale=True), MEAN, STD) for img in images]
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_crop_and_flip_equal_torchvision_at_the_same_offsets():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    dy, dx = torch.tensor([0, 8, 3, 4, 7]), torch.tensor([8, 0, 5, 4, 1])
    flip = torch.tensor([True, False, True, False, True])
    ours = BatchTransform((0.0,) * 3, (1.0,) * 3, crop_padding=4, hflip=True)(
        images, {"dy": dy, "dx": dx, "flip": flip}
    )
    for i, img in enumerate(images):
        expected = TF.crop(TF.pad(img, [4]), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            expected = TF.horizontal_flip(expected)
        torch.testing.assert_close(ours[i], expected.float() / 255)
    # The crop alone (no flip argument), as an unflipped image's crop.
    cropped = crop_and_flip(images, 4, dy, dx)
    for i, img in enumerate(images):
        expected = TF.crop(TF.pad(img, [4]), int(dy[i]), int(dx[i]), 32, 32)
        assert torch.equal(cropped[i], expected)


def make_loader(n=103, batch=10, train=True, **kwargs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return TensorBatchLoader(
        images,
        torch.arange(n),
        batch,
        BatchTransform((0.0,) * 3, (1 / 255,) * 3),
        train=train,
        **kwargs,
    )


def test_eval_loader_covers_every_sample_once_in_order():
    loader = make_loader(train=False)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 11 and labels.tolist() == list(range(103))
    images, y = next(iter(loader))
    assert torch.equal(images[:, 0, 0, 0], y.float())  # images stay paired with their labels


def test_train_loader_shuffles_per_epoch_reproducibly_and_drops_the_ragged_batch():
    loader = make_loader()
    assert len(loader) == 10
    first = torch.cat([y for _, y in loader])
    assert len(first) == 100 and len(set(first.tolist())) == 100
    assert torch.equal(first, torch.cat([y for _, y in loader]))  # same epoch, same order
    loader.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))
    other_seed = make_loader(seed=1)
    assert not torch.equal(first, torch.cat([y for _, y in other_seed]))


@pytest.mark.parametrize("train", [True, False])
def test_ddp_shards_are_disjoint(train):
    shards = [
        torch.cat([y for _, y in make_loader(train=train, rank=r, world_size=3)]) for r in range(3)
    ]
    seen = torch.cat(shards).tolist()
    assert len(seen) == len(set(seen))
    if train:
        assert {len(s) for s in shards} == {30}  # equal steps on every rank
    else:
        assert sorted(seen) == list(range(103))  # evaluation sees every sample


# ---------------------------------------------------------------------------------------------
# Split sizes and the batch size: errors that name the key, the value typed and what works.


@pytest.mark.parametrize(
    "size,total,fraction_of,count",
    [(5, 100, None, 5), (5.0, 100, None, 5), (0.1, 100, None, 10), (0.5, 99, None, 50),
     (0.25, 8, 10, 2), (0.1, 9, 12, 1), (99, 100, None, 99)],
)  # fmt: skip
def test_count_or_fraction_converts_as_the_splits_always_did(size, total, fraction_of, count):
    # A fraction rounds to the nearest image (Python's round: half to even), of fraction_of.
    assert count_or_fraction(size, "data.val_size", total, fraction_of) == count
    if 0 < size < 1:
        assert count == round(size * (fraction_of or total))


@pytest.mark.parametrize(
    "size,total,expected",
    [
        (100, 100, "data.val_size=100: 100 images would leave none on the other side of the "
         "split of 100 images. Use a count of at most 99, or a fraction of at most 0.99."),
        (0.999, 100, "data.val_size=0.999: 100 images (0.999 of 100) would leave none"),
        (0.001, 100, "data.val_size=0.001: 0.001 of 100 images is less than one image. Use a "
         "count of 1 to 99 images, or a fraction of at least 0.01."),
        (-3, 100, "data.val_size=-3: must be a positive number of images"),
        (True, 100, "data.val_size=True: must be a positive number of images"),
        ("10%", 100, "data.val_size='10%': must be a positive number of images"),
        (float("nan"), 100, "data.val_size=nan: must be a positive number"),
        (2.5, 100, "data.val_size=2.5: a count of images must be a whole number"),
        (1, 1, "data.val_size=1: there is only 1 image to split"),
    ],
)  # fmt: skip
def test_count_or_fraction_names_the_key_the_value_typed_and_the_range(size, total, expected):
    with pytest.raises(DataError) as info:
        count_or_fraction(size, "data.val_size", total)
    assert str(info.value).startswith(expected), str(info.value)


def test_a_fraction_at_the_advised_limit_works():
    # The largest fraction the message advises for 100 of 100 images really leaves one.
    assert count_or_fraction(0.99, "data.val_size", 100) == 99
    assert count_or_fraction(0.01, "data.val_size", 100) == 1


def synthetic(train_images: int, **kwargs) -> SyntheticDataModule:
    dm = SyntheticDataModule(train_size_total=train_images, test_size=10, **kwargs)
    dm.setup("fit")
    return dm


def test_a_validation_split_as_large_as_the_training_set_is_a_data_error():
    # Before: a bare ValueError from setup(), inside the fit, showing the converted count.
    with pytest.raises(
        DataError, match=r"^data\.val_size=0\.995: 60 images \(0\.995 of 60\) would leave"
    ):
        synthetic(60, val_size=0.995)


def test_a_batch_larger_than_the_training_set_suggests_one_that_fits():
    dm = synthetic(30, val_size=20, batch_size=16)  # 10 training images
    with pytest.raises(DataError) as info:
        dm.train_dataloader()
    assert str(info.value).startswith("data.batch_size=16 is larger than the 10 training images")
    assert "Use data.batch_size=10 or less" in str(info.value)
    assert len(synthetic(30, val_size=20, batch_size=10).train_dataloader()) == 1


def test_too_few_training_images_for_any_batch_asks_for_more_images():
    dm = synthetic(30, val_size=29, batch_size=4)  # one training image: no batch of two
    with pytest.raises(DataError) as info:
        dm.train_dataloader()
    message = str(info.value)
    assert message.startswith("data.batch_size=4: there is only 1 training image")
    assert "Use more training images" in message and "Use data.batch_size" not in message
