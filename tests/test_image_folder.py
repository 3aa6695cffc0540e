"""`data=image_folder`: class-folder datasets written by the tests themselves (never the real
CIFAR-10 copy). Decoding is checked pixel for pixel against PIL/numpy/torchvision, splits
against the files they come from, and every bad input against the file or key it names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from conftest import SIZE, run_train, solid, write_classes, write_image
from PIL import Image

from normlab.data import CIFAR10_MEAN, CIFAR10_STD, ImageFolderDataModule
from normlab.data import image_folder as image_folder_module
from normlab.data.image_folder import decode_image
from normlab.errors import DataError

# ---------------------------------------------------------------------------------------------
# Helpers: write tiny class folders, build a datamodule, collect what it decoded.


def random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = {"val_size": 2, "test_size": 2, "batch_size": 4, "eval_batch_size": 4}
    return ImageFolderDataModule(root=str(root), **{**defaults, **kwargs})


def setup_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = make_dm(root, **kwargs)
    dm.setup("fit")
    return dm


def values_of(images: torch.Tensor) -> list[int]:
    """The identifying value of each uniform image."""
    return [int(v) for v in images[:, 0, 0, 0]]


def full_train(dm: ImageFolderDataModule) -> torch.Tensor:
    return torch.cat([dm.train_set.images, dm.val_set.images])


def normalization(dm: ImageFolderDataModule) -> dict[str, list[float]]:
    """The statistics the run normalizes with, as results.json records them (from the
    evaluation transform; the training transform must agree)."""
    assert tuple(dm.train_transform.mean) == tuple(dm.eval_transform.mean)
    assert tuple(dm.train_transform.std) == tuple(dm.eval_transform.std)
    return {"mean": list(dm.eval_transform.mean), "std": list(dm.eval_transform.std)}


def data_error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message.strip(), f"not one paragraph: {message!r}"
    return message


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_classes(root / "train", {"cat": 6, "dog": 6})
    return root


# ---------------------------------------------------------------------------------------------
# Decoding: formats, modes, sizes.


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp"])
def test_lossless_rgb_32x32_round_trips_exactly(tmp_path, suffix):
    pixels = random_rgb(SIZE, SIZE, seed=1)
    save_args = {"lossless": True} if suffix == ".webp" else {}
    path = write_image(tmp_path / f"x{suffix}", pixels, **save_args)
    decoded = decode_image(path, SIZE)
    assert decoded.dtype == np.uint8 and decoded.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(decoded, pixels.transpose(2, 0, 1))


def test_jpeg_decodes_close_to_pil(tmp_path):
    # A smooth image, so JPEG's loss and the reduced-scale draft decode stay small.
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=2).astype(np.uint8)
    path = write_image(tmp_path / "x.jpg", pixels, quality=95)
    with Image.open(path) as image:
        reference = np.asarray(TF.center_crop(TF.resize(image.convert("RGB"), SIZE), SIZE))
    decoded = decode_image(path, SIZE).transpose(1, 2, 0).astype(int)
    assert np.abs(decoded - reference).mean() < 3


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale_becomes_three_equal_channels(tmp_path, suffix):
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1))
    decoded = decode_image(write_image(tmp_path / f"g{suffix}", grey, quality=100), SIZE)
    assert decoded.shape == (3, SIZE, SIZE)
    assert (decoded[0] == decoded[1]).all() and (decoded[1] == decoded[2]).all()
    if suffix == ".png":
        np.testing.assert_array_equal(decoded[0], grey)
    else:
        assert np.abs(decoded[0].astype(int) - grey).max() <= 3


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    path = write_image(tmp_path / "deep.png", values)
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")  # really a 16-bit image on disk
    decoded = decode_image(path, SIZE)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for channel in decoded:
        np.testing.assert_array_equal(channel, expected)
    assert decoded.max() == 255 and len(np.unique(decoded)) > 200  # not clipped to 255


def test_palette_images_with_and_without_transparency_give_their_colours(tmp_path):
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 7]
    index = np.random.default_rng(2).integers(0, 3, (SIZE, SIZE), dtype=np.uint8)
    expected = np.array(palette, dtype=np.uint8).reshape(3, 3)[index].transpose(2, 0, 1)
    for name, save_args in [("p.png", {}), ("pt.png", {"transparency": 0})]:
        image = Image.fromarray(index, "P")
        image.putpalette(palette + [0] * (768 - len(palette)))
        path = write_image(tmp_path / name, image, **save_args)
        with Image.open(path) as reopened:
            assert reopened.mode == "P"
            assert ("transparency" in reopened.info) == bool(save_args)
        np.testing.assert_array_equal(decode_image(path, SIZE), expected)


def test_alpha_is_dropped(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    decoded = decode_image(write_image(tmp_path / "a.png", rgba), SIZE)
    np.testing.assert_array_equal(decoded, rgba[..., :3].transpose(2, 0, 1))
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=2)
    decoded = decode_image(write_image(tmp_path / "la.png", Image.fromarray(la, "LA")), SIZE)
    np.testing.assert_array_equal(decoded, np.repeat(la[None, ..., 0], 3, axis=0))


@pytest.mark.parametrize("width,height", [(40, 24), (24, 47), (47, 24), (101, 60), (64, 64)])
def test_other_sizes_are_resized_shorter_side_and_centre_cropped_like_torchvision(
    tmp_path, width, height
):
    pixels = random_rgb(height, width, seed=width * height)
    path = write_image(tmp_path / "x.png", pixels)
    with Image.open(path) as image:
        reference = np.asarray(TF.center_crop(TF.resize(image, SIZE), SIZE))
    np.testing.assert_array_equal(decode_image(path, SIZE), reference.transpose(2, 0, 1))


def test_mixed_folder_decodes_to_uint8_rgb_tensors(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(4)
    written = {
        "a/rgb.png": random_rgb(32, 32, 5),
        "a/wide.jpg": random_rgb(24, 40, 6),
        "a/big.bmp": random_rgb(64, 64, 7),
        "a/photo.webp": random_rgb(40, 24, 8),
        "b/grey.png": Image.fromarray(rng.integers(0, 256, (24, 40), dtype=np.uint8)),
        "b/deep.png": rng.integers(0, 65536, (32, 32), dtype=np.uint16),
        "b/alpha.PNG": rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),
        "b/palette.bmp": Image.fromarray(random_rgb(32, 32, 10)).convert("P"),
        "b/cmyk.jpeg": Image.fromarray(random_rgb(32, 32, 9)).convert("CMYK"),
    }
    for name, image in written.items():
        write_image(root / "train" / name, image)
        write_image(root / "test" / name, image)
    dm = setup_dm(root)
    for split in (dm.train_set, dm.val_set, dm.test_set):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (3, SIZE, SIZE)
    assert len(dm.test_set) == len(written) and len(full_train(dm)) == len(written)
    # Test split in file order (sorted per class): each image equals its own decode.
    for i, name in enumerate(sorted(written, key=lambda n: (n.split("/")[0], n))):
        expected = decode_image(root / "test" / name, SIZE)
        np.testing.assert_array_equal(dm.test_set.images[i].numpy(), expected)
    first = dm.test_set.images[0].numpy()  # a/big.bmp: lossless, 64 -> 32
    with Image.open(root / "test/a/big.bmp") as image:
        reference = np.asarray(TF.center_crop(TF.resize(image, SIZE), SIZE))
    np.testing.assert_array_equal(first, reference.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------
# Classes and splits.


def test_class_names_are_sorted_folder_names_and_labels_follow_the_folders(tmp_path, caplog):
    root = tmp_path / "images"
    origin = write_classes(root / "train", {"zebra": 4, "ant": 5, "Mole": 3})
    (root / "train" / ".hidden").mkdir()  # not a class
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    dm = make_dm(root)
    assert dm.class_names == ("Mole", "ant", "zebra") and dm.num_classes == 3
    with caplog.at_level(logging.WARNING, logger="normlab"):
        dm.setup("fit")
    assert "notes.txt" in caplog.text
    for split in (dm.train_set, dm.val_set, dm.test_set):
        for value, label in zip(values_of(split.images), split.labels.tolist(), strict=True):
            assert dm.class_names[label] == origin[value]
    assert sorted(values_of(torch.cat([full_train(dm), dm.test_set.images]))) == sorted(origin)


def test_a_test_folder_is_exactly_the_test_split(tmp_path):
    root = tmp_path / "images"
    train_origin = write_classes(root / "train", {"a": 5, "b": 5})
    test_origin = write_classes(root / "test", {"a": 2, "b": 3}, start=100)
    dm = setup_dm(root, val_size=3, test_size=4)  # test_size is unused with a test/ folder
    assert sorted(values_of(dm.test_set.images)) == sorted(test_origin)
    assert [dm.class_names[i] for i in dm.test_set.labels] == [
        test_origin[v] for v in values_of(dm.test_set.images)
    ]
    assert sorted(values_of(full_train(dm))) == sorted(train_origin)
    assert len(dm.val_set) == 3


@pytest.mark.parametrize(
    "val_size,test_size,n_val,n_test", [(2, 3, 2, 3), (0.2, 0.25, 4, 5), (0.1, 1, 2, 1)]
)
def test_without_a_test_folder_a_test_split_is_held_out(
    tmp_path, val_size, test_size, n_val, n_test
):
    root = tmp_path / "images"
    origin = write_classes(root / "train", {"a": 10, "b": 10})
    dm = setup_dm(root, val_size=val_size, test_size=test_size)
    assert (len(dm.test_set), len(dm.val_set)) == (n_test, n_val)
    assert len(dm.train_set) == 20 - n_test - n_val
    everything = values_of(torch.cat([full_train(dm), dm.test_set.images]))
    assert sorted(everything) == sorted(origin)  # disjoint, and nothing lost


def test_the_held_out_test_split_does_not_move_with_split_seed(tmp_path):
    root = tmp_path / "images"
    write_classes(root / "train", {"a": 10, "b": 10})
    seed0 = setup_dm(root, val_size=5, test_size=5, split_seed=0)
    seed1 = setup_dm(root, val_size=5, test_size=5, split_seed=1)
    assert torch.equal(seed0.test_set.images, seed1.test_set.images)
    assert torch.equal(seed0.test_set.labels, seed1.test_set.labels)
    assert set(values_of(seed0.val_set.images)) != set(values_of(seed1.val_set.images))


# ---------------------------------------------------------------------------------------------
# Bad input: one clear paragraph naming the key or the file.


def test_no_such_folder(tmp_path):
    message = data_error(make_dm, tmp_path / "nowhere")
    assert "data.root" in message and str(tmp_path / "nowhere") in message


def test_no_train_folder(tmp_path):
    write_classes(tmp_path / "images" / "test", {"a": 2})
    message = data_error(make_dm, tmp_path / "images")
    assert "data.root" in message and "train/" in message


def test_no_class_folders(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "loose.png").write_bytes(b"")
    message = data_error(make_dm, tmp_path / "images")
    assert "no class folders" in message and str(tmp_path / "images" / "train") in message


def test_an_empty_class_folder_is_named(two_classes):
    (two_classes / "train" / "emu").mkdir()
    (two_classes / "train" / "emu" / "readme.txt").write_text("no images here")
    message = data_error(setup_dm, two_classes)
    assert str(two_classes / "train" / "emu") in message and "no images" in message


def test_an_empty_test_class_folder_is_named(two_classes):
    write_classes(two_classes / "test", {"cat": 2})
    (two_classes / "test" / "dog").mkdir()
    message = data_error(setup_dm, two_classes)
    assert str(two_classes / "test" / "dog") in message


def truncated_png(path: Path) -> None:
    write_image(path, random_rgb(32, 32, 0))
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    "name,write",
    [
        ("garbage.jpg", lambda p: p.write_bytes(b"\x00\x01 definitely not a JPEG" * 20)),
        ("empty.png", lambda p: p.write_bytes(b"")),
        ("text.webp", lambda p: p.write_text("hello")),
        ("truncated.png", truncated_png),
    ],
)
def test_a_file_that_is_not_an_image_is_named_and_nothing_is_cached(
    two_classes, tmp_path, name, write
):
    bad = two_classes / "train" / "dog" / name
    write(bad)
    cache_dir = tmp_path / "cache"
    message = data_error(setup_dm, two_classes, cache_dir=str(cache_dir))
    assert str(bad) in message and "not a readable image" in message
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_a_decompression_bomb_is_named(two_classes, monkeypatch):
    bomb = write_image(two_classes / "train" / "cat" / "huge.png", random_rgb(64, 64, 0))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)  # warning above, error above 2x
    message = data_error(setup_dm, two_classes)
    assert str(bomb) in message and "decompression bomb" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60 * 60)  # 4096 pixels: only a warning
    message = data_error(setup_dm, two_classes)
    assert str(bomb) in message and "decompression bomb" in message


def test_test_classes_that_differ_from_train_classes_are_named(two_classes):
    write_classes(two_classes / "test", {"cat": 2, "emu": 2})
    message = data_error(setup_dm, two_classes)
    assert "only in train/: ['dog']" in message and "only in test/: ['emu']" in message


@pytest.mark.parametrize(
    "key,sizes,advice",
    [
        # 12 images, 2 held out for testing: 10 left, and a fraction is of all 12.
        ("data.val_size", {"val_size": 10}, "at most 9, or a fraction of at most 0.75."),
        ("data.val_size", {"val_size": 0.9}, "at most 9, or a fraction of at most 0.75."),
        ("data.val_size", {"val_size": 0}, "must be a positive number of images"),
        ("data.val_size", {"val_size": 0.01}, "a fraction of at least 0.084."),  # no image
        ("data.test_size", {"test_size": 12}, "at most 11, or a fraction of at most 0.916."),
        ("data.test_size", {"test_size": 0.01}, "a fraction of at least 0.084."),
    ],
)
def test_split_sizes_that_leave_nothing(two_classes, key, sizes, advice):
    message = data_error(setup_dm, two_classes, **sizes)
    # The value as typed (not as converted to a count) and the range that works.
    assert message.startswith(f"{key}={sizes[key.split('.')[1]]}") and advice in message


# ---------------------------------------------------------------------------------------------
# The cache.


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir())


def test_the_second_setup_loads_from_the_cache(two_classes, tmp_path, monkeypatch, caplog):
    cache_dir = tmp_path / "cache"
    first = setup_dm(two_classes, cache_dir=str(cache_dir))
    assert len(cache_files(cache_dir)) == 1  # the cache, and no temporary file beside it

    def no_decoding(path, size):
        raise AssertionError(f"decoded {path} although it was cached")

    monkeypatch.setattr(image_folder_module, "decode_image", no_decoding)
    with caplog.at_level(logging.INFO, logger="normlab"):
        second = setup_dm(two_classes, cache_dir=str(cache_dir))
    assert "from the cache" in caplog.text
    for a, b in [(first.train_set, second.train_set), (first.test_set, second.test_set)]:
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert normalization(second) == normalization(first)
    assert len(cache_files(cache_dir)) == 1


def test_the_cache_is_rebuilt_when_a_file_is_added(two_classes, tmp_path):
    cache_dir = tmp_path / "cache"
    before = setup_dm(two_classes, cache_dir=str(cache_dir), val_size=1, test_size=1)
    write_image(two_classes / "train" / "dog" / "new.png", solid(250))
    after = setup_dm(two_classes, cache_dir=str(cache_dir), val_size=1, test_size=1)
    everything = torch.cat([full_train(after), after.test_set.images])
    assert 250 in values_of(everything) and len(everything) == 13
    assert len(full_train(before)) + len(before.test_set) == 12
    assert len(cache_files(cache_dir)) == 1
    # ... and the rebuilt cache now serves the new folder.
    cached = torch.load(cache_files(cache_dir)[0], weights_only=True)
    assert 250 in values_of(cached["train_images"])


@pytest.mark.parametrize(
    "content", [b"not a torch file", None], ids=["garbage", "a tensor instead of a record"]
)
def test_an_unreadable_cache_is_ignored_with_a_warning(two_classes, tmp_path, caplog, content):
    cache_dir = tmp_path / "cache"
    first = setup_dm(two_classes, cache_dir=str(cache_dir))
    (cache,) = cache_files(cache_dir)
    if content is None:
        torch.save(torch.zeros(3), cache)
    else:
        cache.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="normlab"):
        second = setup_dm(two_classes, cache_dir=str(cache_dir))
    assert "unreadable cache" in caplog.text
    assert torch.equal(first.train_set.images, second.train_set.images)
    assert torch.load(cache, weights_only=True)["fingerprint"]  # rewritten, readable again


def test_an_unwritable_cache_is_only_a_warning(two_classes, tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="normlab"):
        dm = setup_dm(two_classes, cache_dir=str(blocked / "cache"))
    assert "Could not write the cache" in caplog.text and len(dm.train_set) > 0


# ---------------------------------------------------------------------------------------------
# Normalization statistics.


def numpy_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    values = images.numpy().astype(np.float64) / 255
    return values.mean(axis=(0, 2, 3)), values.std(axis=(0, 2, 3))


@pytest.fixture
def colourful(tmp_path: Path) -> Path:
    """Random images in train/, white ones in test/ (which must not weigh in the statistics)."""
    root = tmp_path / "images"
    for i in range(12):
        pixels = random_rgb(32, 32, i) // (1 + i % 3)  # channels and images differ
        write_image(root / "train" / "ab"[i % 2] / f"{i}.png", pixels)
    for i in range(4):
        write_image(root / "test" / "ab"[i % 2] / f"{i}.png", solid(255))
    return root


def test_statistics_are_computed_from_the_training_images(colourful):
    dm = setup_dm(colourful)
    mean, std = numpy_stats(full_train(dm))
    np.testing.assert_allclose(normalization(dm)["mean"], mean, atol=6e-5)
    np.testing.assert_allclose(normalization(dm)["std"], std, atol=6e-5)
    # The split does not change them: the statistics of the whole train/ folder.
    assert normalization(setup_dm(colourful, split_seed=3, val_size=5)) == normalization(dm)


def test_held_out_test_images_do_not_weigh_in_the_statistics(tmp_path):
    root = tmp_path / "images"
    for i in range(10):
        write_image(root / "train" / "ab"[i % 2] / f"{i}.png", random_rgb(32, 32, i) // 2)
    dm = setup_dm(root, test_size=3, val_size=2)
    mean, std = numpy_stats(full_train(dm))
    np.testing.assert_allclose(normalization(dm)["mean"], mean, atol=6e-5)
    np.testing.assert_allclose(normalization(dm)["std"], std, atol=6e-5)


def test_given_statistics_are_used_as_is(colourful):
    dm = setup_dm(colourful, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    assert normalization(dm) == {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}


def test_a_channel_with_one_value_throughout_is_named_not_divided_by(tmp_path):
    """Green is 7 in every pixel of every image: its standard deviation is 0, and dividing by
    it would turn every input into NaN or inf."""
    root = tmp_path / "images"
    for i in range(12):
        pixels = random_rgb(32, 32, i)
        pixels[..., 1] = 7
        write_image(root / "train" / "ab"[i % 2] / f"{i}.png", pixels)
    message = data_error(setup_dm, root)
    assert message.startswith("data.std=null: channel G of the training images")
    # The advice works: the statistics it gives normalize every input to a finite number.
    mean = [float(v) for v in message.split("data.mean=[")[1].split("]")[0].split(",")]
    std = [float(v) for v in message.split("data.std=[")[1].split("]")[0].split(",")]
    assert std[1] == 1.0 and mean[1] == round(7 / 255, 4)
    dm = setup_dm(root, mean=mean, std=std)
    images, _ = next(iter(dm.train_dataloader()))
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no cache"])
def test_the_decoding_line_promises_a_cache_only_with_one(two_classes, tmp_path, caplog, cache):
    cache_dir = str(tmp_path / "cache") if cache else None
    with caplog.at_level(logging.INFO, logger="normlab"):
        setup_dm(two_classes, cache_dir=cache_dir)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Decoding"))
    assert ("cached afterwards" in line) == cache, line


@pytest.mark.parametrize("given", [False, True], ids=["computed", "given"])
def test_the_eval_loader_normalizes_with_the_statistics(colourful, given):
    stats = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]} if given else {}
    dm = setup_dm(colourful, val_size=4, **stats)
    images, labels = next(iter(dm.val_dataloader()))
    mean = torch.tensor(normalization(dm)["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalization(dm)["std"]).view(1, 3, 1, 1)
    expected = (dm.val_set.images[: len(images)].double() / 255 - mean) / std
    torch.testing.assert_close(images.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(labels, dm.val_set.labels[: len(labels)])


# ---------------------------------------------------------------------------------------------
# Configs and the command line.


def test_the_cifar10_jpeg_preset_composes(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=cifar10_jpeg", f"paths.data_dir={tmp_path / 'data'}"])
    assert cfg.data._target_ == "normlab.data.ImageFolderDataModule"
    assert Path(cfg.data.root) == tmp_path / "data" / "cifar10-jpeg"
    assert cfg.data.mean == pytest.approx(list(CIFAR10_MEAN), abs=1e-4)
    assert cfg.data.std == pytest.approx(list(CIFAR10_STD), abs=1e-4)
    assert cfg.data.val_size == 5000 and cfg.data.image_size == 32
    assert Path(cfg.data.cache_dir) == tmp_path / "data" / "cache"


@pytest.mark.slow
def test_train_cli_on_an_image_folder(tmp_path):
    root = tmp_path / "images"
    for c, name in enumerate(["circle", "square", "triangle"]):
        for i in range(8):
            write_image(root / "train" / name / f"{i}.png", random_rgb(32, 32, 10 * c + i))
        for i in range(2):
            write_image(root / "test" / name / f"{i}.jpg", random_rgb(40, 24, 100 * c + i))
    run_dir = tmp_path / "run"
    proc, results = run_train(
        "data=image_folder", f"data.root={root}", "model=cnn_bn", "model.num_classes=3",
        "trainer.max_epochs=1", "data.batch_size=8", "data.val_size=6", run_dir=run_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results["status"] == "completed" and results["test_acc"] is not None
    assert list((tmp_path / "data" / "cache").glob("image_folder_*.pt"))


# ---------------------------------------------------------------------------------------------
# Every image under a class folder is used: nested, through links, or named as left out.


def decoded_values(dm: ImageFolderDataModule) -> list[int]:
    return sorted(values_of(torch.cat([full_train(dm), dm.test_set.images])))


def test_images_in_linked_and_nested_folders_are_all_used(tmp_path, caplog):
    # The case: train/ship/batch1 -> a folder elsewhere, beside a real batch2/.
    store = write_classes(tmp_path / "store", {"batch": 20})
    root = tmp_path / "images"
    origin = write_classes(root / "train", {"plane": 5}, start=100)
    origin |= write_classes(root / "train" / "ship", {"batch2": 10}, start=150)
    origin |= write_classes(root / "train" / "ship" / "batch2" / "deep", {"er": 3}, start=200)
    (root / "train" / "ship" / "batch1").symlink_to(tmp_path / "store" / "batch")
    with caplog.at_level(logging.INFO, logger="normlab"):
        dm = setup_dm(root)
    assert decoded_values(dm) == sorted([*store, *origin])  # 20 + 5 + 10 + 3, each once
    decoding = next(r.getMessage() for r in caplog.records if "Decoding 38" in r.getMessage())
    assert decoding.endswith("train/ plane 5, ship 33"), decoding
    assert "Left out" not in caplog.text


def test_a_link_loop_is_walked_once_and_named(tmp_path, caplog):
    root = tmp_path / "images"
    origin = write_classes(root / "train", {"cat": 4, "dog": 4})
    loop = root / "train" / "cat" / "again"
    loop.symlink_to(root / "train" / "cat")  # cat/again/again/... forever
    (root / "train" / "dog" / "up").symlink_to(root / "train")  # the other class, through dog
    with caplog.at_level(logging.WARNING, logger="normlab"):
        dm = setup_dm(root)
    assert decoded_values(dm) == sorted(origin)  # no image twice, none in the wrong class
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Left out 2 files or folders" in warnings[0] and str(loop) in warnings[0]
    assert str(root / "train" / "dog" / "up") in warnings[0]


def test_files_left_out_are_counted_and_named_in_one_warning(tmp_path, caplog):
    root = tmp_path / "images"
    write_classes(root / "train", {"cat": 4, "dog": 4})
    cat = root / "train" / "cat"
    (cat / "notes.txt").write_text("not an image")
    write_image(cat / "anim.gif", random_rgb(8, 8, 0))  # a type training does not read
    (cat / "gone.png").symlink_to(tmp_path / "deleted.png")  # a broken link
    write_image(cat / ".hidden.png", random_rgb(8, 8, 1))
    with caplog.at_level(logging.WARNING, logger="normlab"):
        setup_dm(root)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"Left out 4 files or folders under {root / 'train'}: "), (
        warnings[0]
    )
    for name in ("notes.txt", "anim.gif", "gone.png", ".hidden.png"):
        assert str(cat / name) in warnings[0]


def test_every_bad_image_of_a_folder_is_listed_in_one_error(two_classes, tmp_path):
    dog = two_classes / "train" / "dog"
    bad = [dog / f"bad{i}.png" for i in range(5)]
    for path in bad:
        path.write_bytes(b"\x00 not a PNG at all")
    cache_dir = tmp_path / "cache"
    message = data_error(setup_dm, two_classes, cache_dir=str(cache_dir))
    assert f"5 of the 17 images in {two_classes / 'train'} cannot be decoded" in message
    assert all(str(path) in message for path in bad[:3]) and str(bad[3]) not in message
    assert "not a readable image" in message
    listing = Path(message.split("The full list is in ")[1].split()[0].rstrip("."))
    assert sorted(line.split(" is not")[0] for line in listing.read_text().splitlines()) == [
        str(path) for path in bad
    ]
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
