"""Image folders for calibration and top-1 evaluation.

Layouts: ImageFolder (``root/<class>/*.jpg``, the class is the folder name) or flat
(``root/*.jpg``, the class is a WordNet id ``n\\d{8}`` found in the file name, if any).
The offline default calibration images are the real photographs shipped by scikit-learn
(``china.jpg``, ``flower.jpg``) and matplotlib (``grace_hopper.jpg``): only three photos, so
calibration samples are seeded random resized crops and flips of them. Say so when reporting.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG"}
WNID = re.compile(r"n\d{8}")


def list_images(root: str | Path) -> list[tuple[Path, str | None]]:
    """``(path, label)`` pairs of an ImageFolder or flat folder, sorted."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"image folder {root} is a file, not a folder of images")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    items = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.parent != root:
            label = path.parent.name
        else:
            match = WNID.search(path.name)
            label = match.group(0) if match else None
        items.append((path, label))
    if not items:
        raise FileNotFoundError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def default_photos() -> list[Path]:
    """Real photographs present on a fresh machine with this package's dependencies."""
    import matplotlib
    import sklearn

    candidates = [
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
        Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    ]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise FileNotFoundError("no offline default photographs found; pass --calib IMAGE_FOLDER")
    return found


def load_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"image {path} could not be read ({exc.__class__.__name__}: {exc})") from None


def augmented_batches(paths: list[Path], transform, count: int, seed: int, batch_size: int = 8,
                      size: int = 224) -> list[dict]:
    """``count`` seeded random resized crops / flips of ``paths``, then the model's transform."""
    import torchvision.transforms as T

    generator = torch.Generator().manual_seed(seed)
    images = [load_rgb(p) for p in paths]
    crop = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    tensors = []
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG: keep it untouched
        for i in range(count):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            img = crop(images[i % len(images)])
            if bool(torch.rand(1) < 0.5):
                img = img.transpose(0)  # PIL FLIP_LEFT_RIGHT
            tensors.append(transform(img))
    return [{"pixel_values": torch.stack(tensors[s:s + batch_size])} for s in range(0, count, batch_size)]


def folder_batches(root: str | Path, transform, count: int | None = None, batch_size: int = 16
                   ) -> tuple[list[dict], list[str | None]]:
    items = list_images(root)[:count] if count else list_images(root)
    batches, _ = folder_batches_from([p for p, _ in items], transform, batch_size)
    return batches, [label for _, label in items]


def folder_batches_from(paths: list[Path], transform, batch_size: int = 16) -> tuple[list[dict], int]:
    batches = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batches.append({"pixel_values": torch.stack([transform(load_rgb(p)) for p in chunk])})
    return batches, len(paths)
