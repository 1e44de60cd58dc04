"""The built-in `image` job type: one uploaded image in, one or more images out (resized,
thumbnailed, cropped, converted between PNG, JPEG and WebP).

The upload reaches the worker as a file (`ctx.upload`), stored by the service before the
job (`registry.FileInput`); `inspect_image` is what the service reads of it first, the
header alone, so that a decompression bomb or an oversized image is refused with a 422
before any pixel is decoded. Pillow is imported where it runs: in the handler, the
warm-up and `inspect_image`, never when the service loads this module to validate.

One output is the result file itself; several are one zip (one result per job, written by
the attempt that finishes it). Either way the result's `outputs` lists each one's name,
format, size in pixels and bytes.
"""
from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from offload.workers.context import Context
from offload.workers.errors import PermanentError, ValidationError
from offload.workers.filenames import safe_filename
from offload.workers.image_spec import (
    CONTENT_TYPES, INPUT_FORMATS, ImageSettings, Output, image_schema, parse_outputs, resized_size,
)
from offload.workers.registry import FileInput, FileOutput, job_type

#: The EXIF tag of the orientation, and the orientations that swap width and height.
ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)


def validate_image(data: Any, settings: Mapping[str, Any]) -> None:
    parse_outputs(data, ImageSettings.from_settings(settings))


def inspect_image(path: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the service learns of an upload from its header: format, and width and height
    as displayed (after the EXIF orientation). Refuses (ValidationError, no field: the
    service names the upload's) what is not a PNG, JPEG, WebP or GIF, and any image of
    more than `max_pixels`, before a pixel is decoded (`Image.open` reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    limit = ImageSettings.from_settings(settings).max_pixels
    too_large = f"is larger than {limit:,} pixels ([jobs.settings.image] max_pixels)"
    try:
        with warnings.catch_warnings():  # Pillow's own bomb check warns first: refused alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=INPUT_FORMATS) as image:
                (width, height), format = image.size, image.format or ""
                # Not `getexif()`: for a PNG it decodes the pixels to look for EXIF after them.
                exif = Image.Exif()
                if image.info.get("exif"):
                    exif.load(image.info["exif"])
                orientation = exif.get(ORIENTATION, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationError("", f"{too_large}: its header claims more than Pillow's own limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValidationError("", "is not an image offload reads (PNG, JPEG, WebP or GIF)") from None
    if width * height > limit:
        raise ValidationError("", f"{too_large}: its header says {width:,} x {height:,}")
    if orientation in TURNED:
        width, height = height, width
    return {"format": format.lower(), "width": width, "height": height}


def warm_up_image() -> None:
    from PIL import Image, ImageOps  # noqa: F401  (the imports are the warm-up)

    Image.preinit()


@job_type("image", validate=validate_image, schema=image_schema, warm_up=warm_up_image,
          upload=FileInput("image", inspect_image))
def image(data: Any, ctx: Context) -> FileOutput:
    settings = ImageSettings.from_settings(ctx.settings)
    outputs = parse_outputs(data, settings)
    if ctx.upload is None or not Path(ctx.upload).is_file():
        raise PermanentError("the uploaded image of this job is gone (deleted by retention, or by hand)")
    ctx.progress(0, "reading the image")
    source, metadata = _read(ctx.upload, settings)
    keep = bool(data.get("keepMetadata"))
    made: list[tuple[Output, bytes, tuple[int, int]]] = []
    for index, output in enumerate(outputs):
        ctx.progress(5 + 90 * index // len(outputs), f"making {output.name} ({index + 1} of {len(outputs)})")
        picture = render(source, output)
        made.append((output, encode(picture, output, settings, metadata, keep), picture.size))
    listed = [{"name": o.name, "filename": o.filename, "format": o.format.lower(), "width": size[0],
               "height": size[1], "size": len(content)} for o, content, size in made]
    if len(made) == 1:
        output, content, _ = made[0]
        return FileOutput(output.filename, CONTENT_TYPES[output.format], content, meta={"outputs": listed})
    ctx.progress(95, "writing the zip")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zip:  # images are compressed already
        for output, content, _ in made:
            zip.writestr(output.filename, content)
    stem = Path(safe_filename(str(data["image"].get("filename") or "images"))).stem.strip("._")[:100]
    return FileOutput(f"{stem or 'images'}.zip", "application/zip", archive.getvalue(), meta={"outputs": listed})


def _read(path: str, settings: ImageSettings) -> tuple[Any, dict[str, Any]]:
    """The upload's first frame, decoded and turned upright (EXIF orientation), in a mode
    every operation works in; and its metadata (EXIF with the orientation reset, XMP, ICC)."""
    from PIL import Image, ImageOps

    # This process runs one job at a time: Pillow's own bomb check follows the setting, and
    # its warning is an error (the service checked the header already; this is the belt).
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=INPUT_FORMATS) as opened:
                upright = ImageOps.exif_transpose(opened)  # a loaded copy
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, OSError, SyntaxError) as exc:
            raise PermanentError(f"the uploaded image cannot be read: {exc}") from None
    metadata = {key: upright.info[key] for key in ("exif", "xmp", "icc_profile") if upright.info.get(key)}
    metadata["colours"] = upright.mode.rstrip("A")  # what the ICC profile describes: RGB, L, CMYK
    if upright.mode in ("P", "PA", "1", "LA", "La", "RGBa") or upright.mode.startswith("I;16"):
        alpha = upright.mode in ("PA", "LA", "La", "RGBa") or "transparency" in upright.info
        upright = upright.convert("RGBA" if alpha else "RGB")
    upright.info = {}
    return upright, metadata


def render(source: Any, output: Output) -> Any:
    """The picture one output asks for: cropped first, then resized or thumbnailed."""
    from PIL import Image, ImageOps

    picture = source
    if output.crop is not None:
        right, bottom = output.crop[2], output.crop[3]
        if right > source.width or bottom > source.height:
            raise ValidationError(f"outputs.{output.name}.crop", f"reaches past the image "
                                  f"({source.width:,} x {source.height:,})")
        picture = picture.crop(output.crop)
    if output.resize is not None:
        width, height, fit = output.resize
        if fit == "cover" and width and height:  # both given: `parse_outputs` sees to it
            picture = ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
        else:
            picture = picture.resize(resized_size(picture.size, output.resize), Image.Resampling.LANCZOS)
    elif output.thumbnail is not None:
        width, height = output.thumbnail
        picture = picture.copy()
        picture.thumbnail((width or picture.width, height or picture.height), Image.Resampling.LANCZOS)
    return picture


def encode(picture: Any, output: Output, settings: ImageSettings, metadata: dict[str, Any], keep: bool) -> bytes:
    """The output's bytes. The upload's EXIF and XMP are written only with `keep`
    (`keepMetadata`); its ICC profile always is, being how its colours are to be read,
    not something said about the photo."""
    from PIL import Image

    alpha = "A" in picture.getbands()
    if output.format == "JPEG" and picture.mode not in ("L", "RGB", "CMYK"):
        if alpha:  # JPEG has no transparency: flattened onto white
            flat = Image.new("RGB", picture.size, "white")
            flat.paste(picture.convert("RGBA"), mask=picture.convert("RGBA").getchannel("A"))
            picture = flat
        else:
            picture = picture.convert("RGB")
    elif output.format == "WEBP" and picture.mode not in ("RGB", "RGBA"):
        picture = picture.convert("RGBA" if alpha else "RGB")
    elif output.format == "PNG" and picture.mode == "CMYK":
        picture = picture.convert("RGB")
    options: dict[str, Any] = {"format": output.format}
    if output.format != "PNG":
        default = settings.jpeg_quality if output.format == "JPEG" else settings.webp_quality
        options["quality"] = output.quality or default
    if metadata.get("icc_profile") and picture.mode.rstrip("A") == metadata["colours"]:  # still its colour space
        options["icc_profile"] = metadata["icc_profile"]
    for key in ("exif", "xmp") if keep else ():
        if key in metadata:
            options[key] = metadata[key]
    buffer = io.BytesIO()
    picture.save(buffer, **options)
    return buffer.getvalue()
