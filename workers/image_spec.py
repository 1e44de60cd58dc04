"""The `image` job's data, checked at submission: its settings, its outputs, and what each
output does to the uploaded image. Plain Python, no Pillow: the service imports this
module to validate every image submission (`image.py` holds the Pillow side).

    {"image": {...},                    set by the service from the upload (see image.inspect_image)
     "outputs": [{"name": "thumb",      [A-Za-z0-9._-], unique; default "output-<n>"
                  "crop": {"left", "top", "width", "height"},          optional, first
                  "resize": {"width", "height", "fit": "contain" | "cover" | "fill"},
                  "thumbnail": {"width", "height"},                    or this: shrink only
                  "format": "png" | "jpeg" | "webp",                   default: the upload's
                  "quality": 1..100},                                  jpeg and webp only
                 ...],
     "keepMetadata": false}             true keeps EXIF (orientation reset) and XMP
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from offload.workers.errors import ValidationError

#: What an output can be written as, by the names a client uses.
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
#: Pillow's format names of what an upload may be (a GIF is read as its first frame).
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
FITS = ("contain", "cover", "fill")
OUTPUT_KEYS = {"name", "crop", "resize", "thumbnail", "format", "quality"}
DATA_KEYS = {"image", "outputs", "keepMetadata"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ImageSettings:
    """`[jobs.settings.image]`."""

    #: Largest width x height of an upload and of each output (422 beyond, read from the header).
    max_pixels: int = 40_000_000
    #: Largest width or height of an output (WebP's own limit is 16,383).
    max_dimension: int = 16_383
    #: Outputs one job may make from its upload.
    max_outputs: int = 10
    jpeg_quality: int = 85
    webp_quality: int = 80

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImageSettings:
        known = cls.__dataclass_fields__
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"[jobs.settings.image] {unknown[0]} is not a setting (known: {', '.join(known)})")
        values = {key: settings[key] for key in known if key in settings}
        for key, value in values.items():
            if type(value) is not int or value < 1:
                raise ValueError(f"[jobs.settings.image] {key} must be a whole number >= 1")
        return cls(**values)


@dataclass(frozen=True)
class Output:
    """One output, checked: what `image.render` makes."""

    name: str
    format: str  # Pillow's name: PNG, JPEG, WEBP
    crop: tuple[int, int, int, int] | None = None  # left, top, right, bottom
    resize: tuple[int | None, int | None, str] | None = None  # width, height, fit
    thumbnail: tuple[int | None, int | None] | None = None
    quality: int | None = None

    @property
    def filename(self) -> str:
        return self.name + EXTENSIONS[self.format]


def _int(value: Any, field: str, low: int, high: int) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise ValidationError(field, f"must be a whole number from {low:,} to {high:,}")
    return value


def _box(value: Any, field: str, keys: tuple[str, ...], high: int) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValidationError(field, f"must be an object with {', '.join(keys)}")
    unknown = sorted(set(value) - set(keys) - {"fit"})
    if unknown:
        raise ValidationError(f"{field}.{unknown[0]}", f"is not a key here (known: {', '.join(keys)})")
    return {key: _int(value[key], f"{field}.{key}", 1, high) for key in keys if value.get(key) is not None}


def _output(item: Any, index: int, image: Mapping[str, Any], s: ImageSettings) -> Output:
    field = f"outputs[{index}]"
    if not isinstance(item, dict):
        raise ValidationError(field, "must be an object: {name, resize | thumbnail, crop, format, quality}")
    unknown = sorted(set(item) - OUTPUT_KEYS)
    if unknown:
        raise ValidationError(f"{field}.{unknown[0]}", f"is not an output key (known: {', '.join(sorted(OUTPUT_KEYS))})")
    name = item.get("name", f"output-{index + 1}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(f"{field}.name", "must be 1 to 64 letters, digits, '.', '_' or '-', "
                                               "starting with a letter or digit")
    width, height = image.get("width") or s.max_dimension, image.get("height") or s.max_dimension
    crop = None
    if item.get("crop") is not None:
        box = item["crop"]
        if not isinstance(box, dict) or set(box) != {"left", "top", "width", "height"}:
            raise ValidationError(f"{field}.crop", "must be an object of exactly left, top, width, height")
        left = _int(box["left"], f"{field}.crop.left", 0, width - 1)
        top = _int(box["top"], f"{field}.crop.top", 0, height - 1)
        w = _int(box["width"], f"{field}.crop.width", 1, width - left)
        h = _int(box["height"], f"{field}.crop.height", 1, height - top)
        crop, width, height = (left, top, left + w, top + h), w, h
    if item.get("resize") is not None and item.get("thumbnail") is not None:
        raise ValidationError(f"{field}.thumbnail", "give either resize or thumbnail, not both")
    resize = thumbnail = None
    if item.get("resize") is not None:
        box = _box(item["resize"], f"{field}.resize", ("width", "height"), s.max_dimension)
        fit = item["resize"].get("fit", "contain")
        if fit not in FITS:
            raise ValidationError(f"{field}.resize.fit", f"must be one of {', '.join(FITS)}")
        if not box or (fit != "contain" and len(box) < 2):
            need = "width or height (or both)" if fit == "contain" else "both width and height"
            raise ValidationError(f"{field}.resize", f"needs {need} with fit {fit!r}")
        resize = (box.get("width"), box.get("height"), fit)
        width, height = resized_size((width, height), resize)
    elif item.get("thumbnail") is not None:
        box = _box(item["thumbnail"], f"{field}.thumbnail", ("width", "height"), s.max_dimension)
        if not box:
            raise ValidationError(f"{field}.thumbnail", "needs width or height (or both)")
        thumbnail = (box.get("width"), box.get("height"))
    if width * height > s.max_pixels:
        raise ValidationError(f"{field}.resize", f"would make {width:,} x {height:,} pixels; at most "
                                                 f"{s.max_pixels:,} ([jobs.settings.image] max_pixels)")
    given = item.get("format")
    if given is None:
        source = str(image.get("format", "")).upper()
        format = source if source in EXTENSIONS else "PNG"
    elif isinstance(given, str) and given.lower() in FORMATS:
        format = FORMATS[given.lower()]
    else:
        raise ValidationError(f"{field}.format", "must be one of png, jpeg, webp")
    quality = None
    if item.get("quality") is not None:
        if format == "PNG":
            raise ValidationError(f"{field}.quality", "applies to jpeg and webp only (png is lossless)")
        quality = _int(item["quality"], f"{field}.quality", 1, 100)
    return Output(name, format, crop, resize, thumbnail, quality)


def resized_size(size: tuple[int, int], resize: tuple[int | None, int | None, str]) -> tuple[int, int]:
    """The size `resize` makes of an image of `size`: the box itself for cover and fill, the
    largest size within it that keeps the aspect ratio for contain (the one rule for the
    check here and for `image.render`)."""
    width, height, fit = resize
    if fit != "contain":
        return width or size[0], height or size[1]
    scale = min(width / size[0] if width else float("inf"), height / size[1] if height else float("inf"))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def parse_outputs(data: Any, settings: ImageSettings) -> list[Output]:
    """The outputs of a job's data, or `ValidationError` naming the field."""
    if not isinstance(data, dict):
        raise ValidationError("", "must be an object with outputs (and the uploaded image)")
    unknown = sorted(set(data) - DATA_KEYS)
    if unknown:
        raise ValidationError(unknown[0], f"is not a key of image data (known: {', '.join(sorted(DATA_KEYS))})")
    image = data.get("image")
    if not isinstance(image, dict) or "width" not in image:
        raise ValidationError("image", "is required: upload the image as the `file` part of a multipart/form-data "
                                       'POST, or send {"base64": "..."}')
    if not isinstance(data.get("keepMetadata", False), bool):
        raise ValidationError("keepMetadata", "must be true or false")
    outputs = data.get("outputs")
    if not isinstance(outputs, list) or not 1 <= len(outputs) <= settings.max_outputs:
        raise ValidationError("outputs", f"must be an array of 1 to {settings.max_outputs} outputs "
                                         "([jobs.settings.image] max_outputs)")
    parsed = [_output(item, i, image, settings) for i, item in enumerate(outputs)]
    seen: set[str] = set()
    for i, output in enumerate(parsed):
        if output.name.lower() in seen:  # zip members are compared without case on some systems
            raise ValidationError(f"outputs[{i}].name", f"{output.name!r} is used by an earlier output")
        seen.add(output.name.lower())
    return parsed


def image_schema(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`data` as a JSON submission sends it (the base64 form), for `/api/openapi.json`."""
    s = ImageSettings.from_settings(settings)
    box: dict[str, Any] = {"type": "object", "properties": {"width": {"type": "integer", "minimum": 1, "maximum": s.max_dimension},
                                            "height": {"type": "integer", "minimum": 1,
                                                       "maximum": s.max_dimension}}}
    return {"type": "object", "required": ["image", "outputs"], "properties": {
        "image": {"type": "object", "required": ["base64"], "properties": {
            "base64": {"type": "string", "format": "byte"}, "filename": {"type": "string"}}},
        "outputs": {"type": "array", "minItems": 1, "maxItems": s.max_outputs, "items": {
            "type": "object", "properties": {
                "name": {"type": "string", "pattern": _NAME.pattern},
                "crop": {"type": "object", "required": ["left", "top", "width", "height"]},
                "resize": {**box, "properties": {**box["properties"], "fit": {"type": "string", "enum": list(FITS)}}},
                "thumbnail": box,
                "format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                "quality": {"type": "integer", "minimum": 1, "maximum": 100}}}},
        "keepMetadata": {"type": "boolean"}}}
