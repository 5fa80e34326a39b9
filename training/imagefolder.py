"""Your own images: `PATH/train/<class>/*` and `PATH/test/<class>/*`, as uint8 arrays.

- Two levels, `PATH/train/<group>/<class>/*`: the groups become the class hierarchy (the
  hierarchical head's tree); classes are named `group/class`.
- Images are resized to `image_size` x `image_size`; when every image is gray (R = G = B),
  one channel is kept.
- `PATH/headsweep.json` may declare the set's augmentation defaults, e.g. `{"flip": false,
  "pad_mode": "replicate"}` for handwritten characters (orientation matters, white background).
- Decoding runs in threads with a progress line, and the arrays are cached in
  ~/.cache/headsweep (keyed by the files' names, sizes and times, and the image size), so a
  search and its retrain decode once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DECLARATION = "headsweep.json"
DECLARABLE = {"flip": bool, "pad_mode": str}


class ImageFolderError(ValueError):
    pass


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def layout(part: Path) -> tuple[list[str], list[str] | None, list[int] | None, list[tuple[Path, int]]]:
    """(class names, group names or None, class -> group or None, [(file, class id)]) of one part."""
    dirs = sorted(d for d in part.iterdir() if d.is_dir())
    two_level = dirs and all(not _images_in(d) and any(s.is_dir() for s in d.iterdir()) for d in dirs)
    if not two_level:
        samples = [(f, i) for i, d in enumerate(dirs) for f in _images_in(d)]
        return [d.name for d in dirs], None, None, samples
    classes, groups, class_to_group, samples = [], [d.name for d in dirs], [], []
    for g, group in enumerate(dirs):
        for cls in sorted(s for s in group.iterdir() if s.is_dir()):
            samples += [(f, len(classes)) for f in _images_in(cls)]
            classes.append(f"{group.name}/{cls.name}")
            class_to_group.append(g)
    return classes, groups, class_to_group, samples


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(_eight_bit(img).convert("RGB").resize((size, size), Image.BILINEAR))
    except Image.DecompressionBombError as exc:  # PIL's guard: over 2 x Image.MAX_IMAGE_PIXELS (~179 Mpixel)
        raise ImageFolderError(f"{_shown(path)}: too large to decode ({exc}): resize it first") from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ImageFolderError(f"{_shown(path)}: not a readable image ({type(exc).__name__}: {exc})") from None


def _eight_bit(img):
    """16- and 32-bit gray images scaled to 8 bits: PIL's convert('RGB') clips them, which turns a 16-bit
    PNG white."""
    from PIL import Image

    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I") and a.max(initial=0) <= 65535 else max(a.max(initial=0), 1.0)
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _shown(path: Path) -> str:
    """A path for a message, whatever bytes its name holds (a non-UTF-8 name shows as \\x.. escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _cache_file(samples: list[tuple[Path, int]], size: int) -> Path:
    key = hashlib.sha1(f"{size}".encode())
    for path, label in samples:
        st = path.stat()
        key.update(os.fsencode(path) + f"|{st.st_size}|{st.st_mtime_ns}|{label}".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headsweep"
    return root / f"imagefolder-{key.hexdigest()[:20]}.npz"


def decode_all(samples: list[tuple[Path, int]], size: int, what: str) -> np.ndarray:
    """(N, H, W, 3) uint8 of every sample, decoded in threads (PIL releases the GIL), cached."""
    cache = _cache_file(samples, size)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as f:
            return f["images"]
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    start, step = time.perf_counter(), max(1000, len(samples) // 10)  # ~10 lines for a big set, 1 for a small
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, img in enumerate(pool.map(lambda s: _decode(s[0], size), samples)):
            out[i] = img
            if (i + 1) % step == 0 or i + 1 == len(samples):
                tty, last = sys.stderr.isatty(), i + 1 == len(samples)  # a log gets whole lines
                print(f"{chr(13) if tty else ''}{what}: decoded {i + 1}/{len(samples)} images "
                      f"({time.perf_counter() - start:.1f} s)", end="\n" if last or not tty else "",
                      file=sys.stderr, flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=out)
    tmp.replace(cache)  # whole or absent: a killed run leaves no half cache
    return out


def declared_defaults(root: Path) -> dict:
    """The augmentation defaults `PATH/headsweep.json` declares (checked by name and type)."""
    path = root / DECLARATION
    if not path.exists():
        return {}
    if not path.is_file():
        raise ImageFolderError(f"{path} is a folder; it must be a JSON file such as {{\"flip\": false}}")
    try:
        declared = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageFolderError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(declared, dict):
        raise ImageFolderError(f"{path} holds {type(declared).__name__ if declared is not None else 'null'}; it "
                               "must be a JSON object such as {\"flip\": false}")
    for key, value in declared.items():
        if key not in DECLARABLE or not isinstance(value, DECLARABLE[key]):
            raise ImageFolderError(f"{path}: {key}={value!r} is not allowed; it may declare "
                                   f"{ {k: t.__name__ for k, t in DECLARABLE.items()} }")
    return declared


def read(root: Path, image_size: int) -> dict:
    """Arrays (N, C, H, W), labels, names and the declared defaults of the ImageFolder at `root`."""
    if image_size < 4:
        raise ImageFolderError(f"image_size={image_size} must be >= 4 pixels")
    declared = declared_defaults(root)  # a bad declaration fails before any image is decoded
    parts = {}
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"imagefolder:{root} needs sub-folders train/ and test/ with one folder per "
                                    "class (or per group, then per class)")
        parts[part] = layout(root / part)
        if not parts[part][3]:
            raise ImageFolderError(f"imagefolder:{root}/{part} holds no images ({', '.join(EXTENSIONS)})")
    (classes, groups, c2g, train), (test_classes, _, _, test) = parts["train"], parts["test"]
    for name in (*classes, *(groups or ())):
        if name != _shown(Path(name)):
            raise ImageFolderError(f"imagefolder:{root}: the folder name '{_shown(Path(name))}' is not UTF-8; class "
                                   "and group names must be (they are shown and stored as text)")
    counts = np.bincount([s[1] for s in train], minlength=len(classes))
    if counts.min() < 2:  # one image cannot be split between training and validation
        few = [(classes[i], int(counts[i])) for i in np.flatnonzero(counts < 2)]
        raise ImageFolderError(f"imagefolder:{root}/train: every class needs at least 2 images (one may go to "
                               f"validation); {len(few)} have fewer: " + ", ".join(f"{c} ({n})" for c, n in few[:5]))
    if classes != test_classes:
        def few(names):
            return f"{names[:5]}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"

        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise ImageFolderError(f"imagefolder:{root}: train/ and test/ must hold the same classes; only in train/: "
                               f"{few(only_train)}, only in test/: {few(only_test)}"
                               + ("" if only_train or only_test else " (same names, other groups)"))
    x_tr = decode_all(train, image_size, f"imagefolder:{root} train")
    x_te = decode_all(test, image_size, f"imagefolder:{root} test")
    gray = all((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all() for x in (x_tr, x_te))
    chans = slice(0, 1) if gray else slice(0, 3)  # gray sets keep one channel

    def nchw(x):
        return x[..., chans].transpose(0, 3, 1, 2).copy()

    return {"x_train": nchw(x_tr), "y_train": np.array([s[1] for s in train], np.int64),
            "x_test": nchw(x_te), "y_test": np.array([s[1] for s in test], np.int64), "classes": classes,
            "groups": groups, "class_to_group": None if c2g is None else np.array(c2g),
            "augment": declared}
