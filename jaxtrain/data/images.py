"""Folders of images (`data.source: images`): one sub-folder per class, PNG and JPEG through Pillow.

The sub-folder names, sorted, are the class names; a class's images are every PNG or JPEG
file under its sub-folder, in path order. An image is read as viewers show it, turned as its
EXIF Orientation tag says (phones store portrait photos sideways). Each folder is decoded
once, by a pool of threads (Pillow releases the GIL while it decodes), into a uint8 .npy
file under the cache directory; a later run over the same files (same names, sizes and
modification times) with the same image settings maps that file instead of decoding again.
Grayscale images are (n, H, W), as IDX and NPZ images are, so the same pixels make the same
dataset whichever way they come; colour images are (n, H, W, 3).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxtrain.config.data import DataConfig
from jaxtrain.data.raw import Part, RawData
from jaxtrain.util.errors import DataError
from jaxtrain.util.files import user_cache_dir
from jaxtrain.util.optional import require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow modes without colour: these decode to one channel unless data.channels says 3.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_CACHE_FORMAT = 2          # part of the cache key: a new layout or decoding never reads an old entry
_ORIENTATION = 0x0112      # the EXIF tag saying how a viewer turns the stored pixels (phone photos)
_QUARTER_TURNS = {5, 6, 7, 8}    # orientations under which the width and height swap
_MAX_NAMED = 20            # skipped files listed by name in the report


def require_pillow(feature: str = "data.source=images") -> Any:
    """PIL.Image; one line naming the `images` extra when Pillow is not installed."""
    require("PIL", "images", f"{feature} (Pillow)")
    from PIL import Image
    return Image


def _decode_errors(image_module: Any) -> tuple[type[BaseException], ...]:
    """What Pillow raises for a file that is not a readable image (truncated, corrupt, not one)."""
    return (OSError, SyntaxError, ValueError, EOFError, image_module.DecompressionBombError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder's image files (relative paths, in class then path order) and their labels."""
    root: str
    files: list[str]
    labels: np.ndarray
    ignored: int                     # files without an image suffix
    signature: list[str]             # "path size mtime" of each file, for the cache key

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])


def _image_files(directory: str, below: str = "") -> tuple[list[tuple[str, str]], int]:
    """(path relative to `directory`, "path size mtime") of each image file under it, in path
    order, and the number of other files. One scandir walk: no second stat per file."""
    images, others = [], 0
    with os.scandir(os.path.join(directory, below)) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        rel = os.path.join(below, e.name)
        if e.is_dir():
            more, n = _image_files(directory, rel)
            images += more
            others += n
        elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
            st = e.stat()
            images.append((rel, f"{rel}\0{st.st_size}\0{st.st_mtime_ns}"))
        else:
            others += 1
    return images, others


def list_folder(root: str, classes: list[str] | None = None) -> tuple[Folder, list[str]]:
    """The images of a folder with one sub-folder per class. `classes`: the training folder's
    classes, which an evaluation folder's sub-folders must be among."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"{root}: not a directory; set data.path to a folder with one sub-folder of "
                        "images per class")
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no sub-folders; put the images of each class in a sub-folder named "
                        "after the class")
    unknown = [c for c in found if classes is not None and c not in classes]
    if unknown:
        raise DataError(f"{root}: class folder(s) {', '.join(unknown)} not among the training folder's "
                        f"classes ({', '.join(classes)}); labels unseen in training cannot be evaluated")
    classes = found if classes is None else classes
    files, labels, ignored = [], [], 0
    for name in found:
        try:
            images, others = _image_files(str(base), name)
        except OSError as e:
            raise DataError(f"{base / name}: cannot list the folder ({e.strerror or e})") from None
        files += images
        labels += [classes.index(name)] * len(images)
        ignored += others
    if not files:
        raise DataError(f"{root}: no PNG or JPEG files in its class sub-folders ({', '.join(found)})")
    return Folder(str(root), [f for f, _ in files], np.asarray(labels, np.int64), ignored,
                  [sig for _, sig in files]), classes


# ---------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class Target:
    """What every image becomes: height x width pixels, 1 or 3 channels; `resize` False means
    an image of another size is an error rather than resized."""
    height: int
    width: int
    channels: int
    resize: bool

    @property
    def shape(self) -> tuple[int, ...]:
        hw = (self.height, self.width)
        return hw if self.channels == 1 else (*hw, 3)


def threads(cfg: DataConfig) -> int:
    """Decoding threads: data.num_parallel_calls, or one per core (-1)."""
    return cfg.num_parallel_calls if cfg.num_parallel_calls > 0 else (os.cpu_count() or 1)


def parallel(fn: Callable[[int], Any], n: int, workers: int, chunk: int = 256) -> list[Any]:
    """[fn(i) for i in range(n)], by a pool of threads in chunks of indices (a task per
    file cost more to hand over than a small PNG takes to decode)."""
    starts = range(0, n, chunk)
    run = lambda start: [fn(i) for i in range(start, min(start + chunk, n))]  # noqa: E731
    if workers <= 1 or len(starts) <= 1:
        return [r for start in starts for r in run(start)]
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(starts))) as pool:
        return [r for part in pool.map(run, starts) for r in part]


def _orientation(im: Any) -> int:
    """The image's EXIF Orientation, 1 (as stored) when it has none or an invalid one."""
    value = im.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(im: Any) -> Any:
    """The image as viewers show it: turned and flipped as its EXIF Orientation says, which
    Pillow does not do on open (a phone's portrait JPEG is stored sideways)."""
    if _orientation(im) == 1:
        return im
    from PIL import ImageOps
    return ImageOps.exif_transpose(im)


def _probe(image_module: Any, path: str) -> tuple[int, int, str] | str:
    """(width, height, mode) of the image as viewers show it, or the reason it cannot be read."""
    try:
        with image_module.open(path) as im:
            w, h = im.size
            return (h, w, im.mode) if _orientation(im) in _QUARTER_TURNS else (w, h, im.mode)
    except _decode_errors(image_module) as e:
        return _one_line(e)


def _decode_into(image_module: Any, path: str, target: Target, out: np.ndarray, slot: int
                 ) -> tuple[int, int, str] | str:
    """Decode one file, upright, into out[slot]; its (width, height, mode) as found (upright),
    or the reason it cannot be read. A file of another size than a `resize=False` target is
    left out of `out`."""
    try:
        with image_module.open(path) as im:
            im = _upright(im)
            found = (im.size[0], im.size[1], im.mode)
            if target.resize or im.size == (target.width, target.height):
                mode = "L" if target.channels == 1 else "RGB"
                im = im if im.mode == mode else im.convert(mode)    # converting to its own mode copies
                if im.size != (target.width, target.height):
                    im = im.resize((target.width, target.height), image_module.Resampling.BILINEAR)
                out[slot] = np.asarray(im, np.uint8)
            return found
    except _decode_errors(image_module) as e:
        return _one_line(e)


def _first_target(image_module: Any, folder: Folder, cfg: DataConfig) -> tuple[Target, str]:
    """The training folder's target from data.image_size/channels, else from its first
    readable image (size and, provisionally, channels), and the file it came from."""
    reason = ""
    for i in range(len(folder.files)):
        probe = _probe(image_module, folder.path(i))
        if isinstance(probe, str):
            reason = reason or probe
            continue
        w, h, mode = probe
        h, w = cfg.image_size or (h, w)
        channels = cfg.channels or (1 if mode in _GRAY_MODES else 3)
        return Target(int(h), int(w), int(channels), resize=cfg.image_size is not None), folder.path(i)
    raise DataError(f"{folder.path(0)}: cannot read as an image ({reason}); the folder {folder.root} "
                    "holds no readable image")


def _check_sizes(folder: Folder, found: list, target: Target, first_file: str) -> None:
    """Without data.image_size every image must have the first training image's size."""
    if target.resize:
        return
    for i, p in enumerate(found):
        if not isinstance(p, str) and (p[1], p[0]) != (target.height, target.width):
            raise DataError(f"{folder.path(i)}: {p[1]}x{p[0]} pixels (height x width), but {first_file} "
                            f"is {target.height}x{target.width}; images of mixed sizes need "
                            "data.image_size: [height, width] to resize them to one size")


# ---------------------------------------------------------------- the cache


@dataclasses.dataclass
class Decoded:
    """A folder's decoded pixels (a read-only memory map) and what could not be read."""
    target: Target
    pixels: np.ndarray               # (kept, *target.shape) uint8
    kept: np.ndarray                 # file index of each row of `pixels`
    skipped: list[tuple[str, str]]   # (file, reason), in file order
    cache: str
    reused: bool
    first_file: str                  # the file the target size was taken from


def cache_root(cfg: DataConfig) -> str:
    """data.cache_dir, else `images` in jaxtrain's cache folder (util/files.py: XDG_CACHE_HOME,
    else ~/.cache)."""
    if cfg.cache_dir:
        return cfg.cache_dir
    return str(user_cache_dir() / "images")


def cache_key(folder: Folder, settings: list) -> str:
    """A digest of the folder's file list, sizes and modification times and of `settings`."""
    digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, os.path.abspath(folder.root), settings]).encode())
    digest.update("\n".join(folder.signature).encode())
    return digest.hexdigest()[:24]


def decoded_folder(folder: Folder, cfg: DataConfig, reference: Decoded | None = None) -> Decoded:
    """The folder's pixels from the cache, decoding them first if no entry matches."""
    settings = [list(cfg.image_size) if cfg.image_size else None, cfg.channels,
                dataclasses.astuple(reference.target) if reference else None]
    root = cache_root(cfg)
    entry = os.path.join(root, f"images-{cache_key(folder, settings)}")
    if not os.path.isfile(os.path.join(entry, "meta.json")):
        try:
            os.makedirs(root, exist_ok=True)
            partial = tempfile.mkdtemp(prefix=".partial-", dir=root)
        except OSError as e:
            raise DataError(f"{root}: cannot write the decoded-image cache ({e.strerror or e}); set "
                            "data.cache_dir to a writable folder") from None
        try:
            _write_entry(folder, cfg, reference, partial)
            _publish(partial, entry)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return _read_entry(entry, reused=False)
    return _read_entry(entry, reused=True)


def _write_entry(folder: Folder, cfg: DataConfig, reference: Decoded | None, directory: str) -> None:
    """Decode every file into pixels.npy in one pass, and say in meta.json what was kept."""
    image_module = require_pillow()
    target, first_file = (reference.target, reference.first_file) if reference \
        else _first_target(image_module, folder, cfg)
    found = _decode_pass(image_module, folder, target, directory, threads(cfg))
    colour = any(not isinstance(p, str) and p[2] not in _GRAY_MODES for p in found)
    if reference is None and cfg.channels is None and target.channels == 1 and colour:
        target = dataclasses.replace(target, channels=3)    # a gray first image, colour later
        found = _decode_pass(image_module, folder, target, directory, threads(cfg))
    _check_sizes(folder, found, target, first_file)
    meta = {"target": dataclasses.asdict(target), "first_file": first_file,
            "kept": [i for i, p in enumerate(found) if not isinstance(p, str)],
            "skipped": [[folder.path(i), p] for i, p in enumerate(found) if isinstance(p, str)]}
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump(meta, f)


def _decode_pass(image_module: Any, folder: Folder, target: Target, directory: str, workers: int) -> list:
    """Every file into its row of pixels.npy (unreadable ones leave a row of zeros)."""
    shape = (len(folder.files), *target.shape)
    pixels = np.lib.format.open_memmap(os.path.join(directory, "pixels.npy"), "w+", np.uint8, shape)
    found = parallel(lambda i: _decode_into(image_module, folder.path(i), target, pixels, i),
                     len(folder.files), workers)
    pixels.flush()
    return found


def _publish(partial: str, entry: str) -> None:
    """Move a finished entry into place; another process that got there first wins."""
    try:
        os.rename(partial, entry)
    except OSError:
        if not os.path.isfile(os.path.join(entry, "meta.json")):
            raise


def _read_entry(entry: str, reused: bool) -> Decoded:
    with open(os.path.join(entry, "meta.json")) as f:
        saved = json.load(f)
    pixels = np.load(os.path.join(entry, "pixels.npy"), mmap_mode="r")
    kept = np.asarray(saved["kept"], np.int64)
    if len(kept) != len(pixels):        # some files could not be read: gather the rest
        pixels = pixels[kept]
    return Decoded(Target(**saved["target"]), pixels, kept,
                   [tuple(s) for s in saved["skipped"]], entry, reused, saved["first_file"])


# ---------------------------------------------------------------- the source


def _check_invalid(decoded: Decoded, policy: str, split: str = "train") -> None:
    """Unreadable files are an error unless the policy drops them (training images only)."""
    if decoded.skipped and (policy == "error" or split != "train"):
        path, reason = decoded.skipped[0]
        more = f" ({len(decoded.skipped)} such files)" if len(decoded.skipped) > 1 else ""
        fix = "or set data.clean.invalid_images=drop to skip unreadable images" if split == "train" \
            else f"{split} images are never skipped"
        raise DataError(f"{path}: cannot read as an image ({reason}){more}; fix or remove the file, {fix}")


def load_images(cfg: DataConfig) -> RawData:
    """The training folder (data.path) and, with data.val_path / data.test_path, separate
    validation / test folders, decoded to the training images' size and channels."""
    require_pillow()
    folder, classes = list_folder(str(cfg.path))
    train = decoded_folder(folder, cfg)
    _check_invalid(train, cfg.clean.invalid_images)
    folder, classes, left_out = _classes_with_images(folder, train, classes, cfg.clean.invalid_images)
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise DataError(f"{cfg.path}: {len(classes)} class folders, but data.num_classes is "
                        f"{cfg.num_classes}; remove data.num_classes or the extra folders")
    raw = RawData("array", {"all": _part(folder, train)}, name=os.path.basename(os.path.normpath(str(cfg.path))),
                  where=str(cfg.path), task="classification", num_classes=len(classes),
                  classes=list(classes))
    folders = {"path": (folder, train)}
    for split in ("val", "test"):
        path = getattr(cfg, f"{split}_path")
        if path is None:
            continue
        split_folder, _ = list_folder(str(path), classes)
        decoded = decoded_folder(split_folder, cfg, reference=train)
        _check_invalid(decoded, cfg.clean.invalid_images, split)    # evaluation examples: never dropped
        raw.parts[split] = _part(split_folder, decoded)
        raw.split_files[split] = (str(path), None)    # the split is this folder, not a fraction
        folders[f"{split}_path"] = (split_folder, decoded)
    raw.extra["report"] = _report(folders, cfg)
    raw.extra["report"]["invalid_images"]["classes_left_out"] = left_out
    return raw


def _classes_with_images(folder: Folder, decoded: Decoded, classes: list[str], policy: str
                         ) -> tuple[Folder, list[str], list[str]]:
    """The training folder's classes that hold a readable image, the folder relabelled to
    them, and the class folders left out. A class folder with no readable image (empty, or
    only other or unreadable files) would be a class the model can never learn: an error
    naming it, or left out under data.clean.invalid_images=drop. Fewer than 2 classes with
    images is always an error: a one-class classifier is "perfect" and learns nothing."""
    counts = np.bincount(folder.labels[decoded.kept], minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty and policy != "drop":
        more = f" ({len(empty)} such folders: {', '.join(empty)})" if len(empty) > 1 else ""
        raise DataError(f"{os.path.join(folder.root, empty[0])}: class folder with no readable PNG or JPEG "
                        f"image{more}; put the class's images there or remove the folder, or set "
                        "data.clean.invalid_images=drop to leave it out")
    kept = [c for c in classes if c not in empty]
    if len(kept) < 2:
        raise DataError(f"{folder.root}: {len(kept)} class folder(s) with images ({', '.join(kept) or 'none'}); "
                        "a classifier needs at least 2 classes: put each class's images in a "
                        "sub-folder named after it")
    new_label = np.array([kept.index(c) if c in kept else -1 for c in classes], np.int64)
    return dataclasses.replace(folder, labels=new_label[folder.labels]), kept, empty


def _part(folder: Folder, decoded: Decoded) -> Part:
    return Part(y=folder.labels[decoded.kept].astype(np.float64), rows=decoded.kept, x=decoded.pixels)


def _report(folders: dict[str, tuple[Folder, Decoded]], cfg: DataConfig) -> dict[str, Any]:
    """The images' entries of preprocess_report.json."""
    target = folders["path"][1].target
    images = {"image_shape": list(target.shape), "resized_to": [target.height, target.width]
              if target.resize else None,
              "folders": {s: {"path": f.root, "files": len(f.files), "decoded": len(d.kept),
                              "other_files_ignored": f.ignored, "cache": d.cache, "cache_reused": d.reused}
                          for s, (f, d) in folders.items()}}
    skipped = [s for _, d in folders.values() for s in d.skipped]
    invalid = {"policy": cfg.clean.invalid_images, "files_skipped": len(skipped),
               "files": [f"{path}: {reason}" for path, reason in skipped[:_MAX_NAMED]]}
    return {"images": images, "invalid_images": invalid}


# ---------------------------------------------------------------- new inputs (predict)


def is_image_input(path: str | os.PathLike) -> bool:
    """A folder, or a file with a PNG or JPEG suffix."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES


def read_image_inputs(path: str | os.PathLike, image_shape: tuple[int, ...], resize: bool,
                      workers: int) -> tuple[np.ndarray, list[str]]:
    """Every image of a folder (its sub-folders too), or one image file, as the training
    images were: `image_shape` (H, W) or (H, W, 3), resized when the run resized. Returns the
    pixels and each image's name (its path below the folder). Nothing is skipped."""
    p = Path(path)
    if p.is_dir():
        names = [rel for rel, _ in _image_files(str(p))[0]]
        if not names:
            raise DataError(f"{p}: no PNG or JPEG files in this folder")
        files = [p / rel for rel in names]
    elif p.is_file():
        files, names = [p], [p.name]
    else:
        raise DataError(f"{p}: input not found; pass --input with an image file or a folder of images")
    image_module = require_pillow("image inputs")
    h, w = image_shape[:2]
    target = Target(int(h), int(w), 3 if len(image_shape) == 3 else 1, resize)
    out = np.zeros((len(files), *target.shape), np.uint8)
    found = parallel(lambda i: _decode_into(image_module, str(files[i]), target, out, i), len(files), workers)
    for path, p in zip(files, found):
        if isinstance(p, str):
            raise DataError(f"{path}: cannot read as an image ({p})")
        if not resize and (p[1], p[0]) != (target.height, target.width):
            raise DataError(f"{path}: {p[1]}x{p[0]} pixels (height x width), but the run was trained "
                            f"on {target.height}x{target.width} images; resize the image or train with "
                            "data.image_size")
    return out, names
