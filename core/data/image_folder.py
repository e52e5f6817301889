"""The image-folder reader: `<path>/train/<class>/<image>` and `<path>/test/<class>/<image>`, one size of image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.config import DatasetConfig
from core.data.sources import DatasetError, RawData, need_path

GRAYSCALE_MODES = {"1", "L", "LA"}  # PIL modes of 8-bit grayscale images (bilevel, plain, with alpha)


def _read_image(path: str) -> np.ndarray:
    """One image file as uint8 [1, H, W] when it is 8-bit grayscale (`GRAYSCALE_MODES`), else [3, H, W] RGB."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L" if img.mode in GRAYSCALE_MODES else "RGB"))
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError or its own errors on a bad file
        raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {e}); replace or remove the "
                           "file") from None
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


def _read_image_folder(root: Path) -> tuple[list[np.ndarray], np.ndarray, list[str], list[Path]]:
    """All images of one ImageFolder split (each [1 or 3, H, W] uint8, `_read_image`), labels, class names and image
    files, in the order of (class folder, file name)."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"cannot read image folder {root} ({e}): it needs one sub-folder per class "
                           "holding image files (png, jpg, ...)") from None
    images, sizes = [], {}
    for path, _ in folder.samples:
        img = _read_image(path)
        sizes.setdefault(img.shape[1:], path)
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = sizes.items()
            raise DatasetError(f"images in {root} differ in size: {s1[0]}x{s1[1]} ({p1}) and "
                               f"{s2[0]}x{s2[1]} ({p2}) (HxW); resize them all to one size first")
        images.append(img)
    return images, np.asarray(folder.targets), list(folder.classes), [Path(p) for p, _ in folder.samples]


def _stack_images(images: list[np.ndarray], channels: int) -> np.ndarray:
    """Images of 1 or 3 channels as one uint8 [N, channels, H, W] array; grayscale ones repeated into RGB when
    `channels` is 3 (what PIL's convert("RGB") gives them)."""
    return np.stack([np.repeat(img, channels // len(img), axis=0) for img in images])


def load_image_folder(cfg: DatasetConfig, cache_dir: Path | None = None) -> RawData:
    """An ImageFolder tree `<path>/train/<class>/*.png` and `<path>/test/<class>/*.png`."""
    root = need_path(cfg, "a folder with train/ and test/ sub-folders, one folder per class in each")
    missing = [str(root / s) for s in ("train", "test") if not (root / s).is_dir()]
    if missing:
        raise DatasetError(f"image folder split(s) not found: {', '.join(missing)}; dataset.path must hold "
                           "train/<class>/<image> and test/<class>/<image>")
    train_images, ytr, classes, train_files = _read_image_folder(root / "train")
    test_images, yte, test_classes, test_files = _read_image_folder(root / "test")
    if test_classes != classes:
        raise DatasetError(f"test classes {test_classes} differ from train classes {classes} in {root}; "
                           "give test/ exactly the same class folders as train/")
    if train_images and test_images and train_images[0].shape[1:] != test_images[0].shape[1:]:
        raise DatasetError(f"train images are {train_images[0].shape[1:]} but test images are "
                           f"{test_images[0].shape[1:]} (HxW) in {root}; resize them to one size")
    # the files' own mode: all grayscale stays 1 channel (a third of the work of RGB), any colour makes all RGB
    grayscale = all(len(img) == 1 for img in train_images + test_images)
    channels = 1 if grayscale else 3
    xtr, xte = _stack_images(train_images, channels), _stack_images(test_images, channels)
    relative = [p.relative_to(root).as_posix() for p in train_files + test_files]
    return RawData(xtr, ytr, np.arange(len(xtr)), xte, yte, np.arange(len(xte)), classes, scale=255.0,
                   sources=train_files + test_files, train_source=np.array(relative[:len(xtr)], dtype=object),
                   test_source=np.array(relative[len(xtr):], dtype=object),
                   decoding="grayscale images as 1 channel" if grayscale else None)
