"""``--mimic fal``: the model server also answers under the fal endpoint ids of the
default model map (infra/settings.py), so the real fal adapter (activities/providers/
fal.py) runs end to end here, with ``BITBUDDIES_FAL_BASE_URL`` pointing fal_client at us.

Each endpoint takes the arguments fal documents for it (its model page and its client's
generated types, 2026), refuses what that endpoint would refuse with fal's 422 shape
(``{"detail": [{"loc": ["body", ...], "msg", "type"}]}``) and answers its documented
result shape. The work itself is done by our CPU apps (``apps/``), called as they are:
arguments are translated in, results out. What differs from the hosted models, on
purpose: sizes stay small so a generation runs in seconds on CPU (Kontext draws about
1024 px a side; ours draws ``IMAGE_SIDE``), and fal's extra knobs (seeds, guidance,
safety tolerance) are accepted and have no effect.

- ``fal-ai/imageutils/nsfw``: our nsfw classifier -> ``{nsfw_probability}``.
- ``fal-ai/flux-pro/kontext``: our cartoonify -> ``{images: [{url, content_type, width,
  height, ...}], timings, seed, has_nsfw_concepts, prompt}``.
- ``fal-ai/bria/expand``: the image at ``original_image_size`` placed at
  ``original_image_location`` on a ``canvas_size`` canvas; our cartoonify's full-body
  drawing fills the new area below the face our analyze app finds -> ``{image, seed}``.
- ``fal-ai/birefnet/v2``: our segment-image -> ``{image (the RGBA cut-out), mask_image}``.
- ``fal-ai/kling-video/v2.1/standard/image-to-video``: our segment-image finds the figure
  (Kling needs no mask), our animate moves it for ``duration`` seconds at 24 fps ->
  ``{video: {url, content_type, file_name, file_size}}``.
- ``fal-ai/birefnet/v2/video``: our segment-video -> ``{video (the cut-out), mask_video}``
  in the asked ``video_output_type``.
- ``veed/video-background-removal``: our segment-video; ``output_codec`` vp9 gives ONE
  VP9 WebM whose alpha is the mask (h264: the figure over black) -> ``{video}``.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final, Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.modelserver.apps import analyze, animate, cartoonify, nsfw, segment_image, segment_video
from infra.modelserver.apps.base import (
    URL_PATTERN,
    AppSpec,
    Box,
    InvalidInputError,
    LogFn,
    OutputFile,
)
from infra.modelserver.fetch import fetch_input
from infra.modelserver.media import (
    U8,
    ffmpeg_exe,
    fit_max_side,
    load_image,
    load_mask,
    probe_video,
    save_png,
)
from infra.photo_rules import Box as Rect

MIMICS: Final = ("fal",)
IMAGE_SIDE: Final = 384  # what our Kontext stand-in draws, longest side (fal's: ~1024)
KLING_FPS: Final = 24
FFMPEG_TIMEOUT_SECONDS: Final = 300.0

KONTEXT: Final = "fal-ai/flux-pro/kontext"
BRIA_EXPAND: Final = "fal-ai/bria/expand"
BIREFNET: Final = "fal-ai/birefnet/v2"
BIREFNET_VIDEO: Final = "fal-ai/birefnet/v2/video"
KLING: Final = "fal-ai/kling-video/v2.1/standard/image-to-video"
NSFW: Final = "fal-ai/imageutils/nsfw"
VEED: Final = "veed/video-background-removal"

_IGNORE = ConfigDict(extra="ignore")  # fal ignores arguments an endpoint does not take


# --- arguments, as each endpoint documents them ----------------------------------------


class NsfwArgs(BaseModel):
    model_config = _IGNORE
    image_url: str = Field(pattern=URL_PATTERN)


class KontextArgs(BaseModel):
    model_config = _IGNORE
    prompt: str = Field(min_length=1)
    image_url: str = Field(pattern=URL_PATTERN)
    seed: int | None = None
    guidance_scale: float = Field(3.5, ge=1, le=20)
    num_images: int = Field(1, ge=1, le=4)
    safety_tolerance: Literal["1", "2", "3", "4", "5", "6"] = "2"
    output_format: Literal["jpeg", "png"] = "jpeg"
    enhance_prompt: bool = False
    sync_mode: bool = False


class BriaExpandArgs(BaseModel):
    model_config = _IGNORE
    image_url: str = Field(pattern=URL_PATTERN)
    canvas_size: tuple[int, int]  # [width, height], at most 5000 a side
    original_image_size: tuple[int, int] | None = None  # default: the image's own
    original_image_location: tuple[int, int] | None = None  # default: centred
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    sync_mode: bool = False


class BirefnetArgs(BaseModel):
    model_config = _IGNORE
    image_url: str = Field(pattern=URL_PATTERN)
    model: str = "General Use (Light)"
    operating_resolution: Literal["1024x1024", "2048x2048", "2304x2304"] = "1024x1024"
    output_format: Literal["webp", "png", "gif"] = "png"
    output_mask: bool = False
    refine_foreground: bool = True
    sync_mode: bool = False


class KlingArgs(BaseModel):
    model_config = _IGNORE
    prompt: str = Field(min_length=1, max_length=2500)
    image_url: str = Field(pattern=URL_PATTERN)
    duration: Literal["5", "10"] = "5"
    negative_prompt: str = Field("blur, distort, and low quality", max_length=2500)
    cfg_scale: float = Field(0.5, ge=0, le=1)


class BirefnetVideoArgs(BaseModel):
    model_config = _IGNORE
    video_url: str = Field(pattern=URL_PATTERN)
    model: str = "General Use (Light)"
    operating_resolution: Literal["1024x1024", "2048x2048", "2304x2304"] = "1024x1024"
    output_mask: bool = False
    refine_foreground: bool = True
    # fal also offers ProRes 4444 (.mov) and GIF; the stand-in makes these two.
    video_output_type: Literal["X264 (.mp4)", "VP9 (.webm)"] = "X264 (.mp4)"


class VeedArgs(BaseModel):
    model_config = _IGNORE
    video_url: str = Field(pattern=URL_PATTERN)
    output_codec: Literal["vp9", "h264"] = "vp9"
    subject_is_person: bool = True
    refine_foreground_edges: bool = True


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """fal's 422 detail: pydantic's errors located in the request ``body``."""
    return [
        {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in json.loads(exc.json(include_url=False))
    ]


# --- the endpoints -----------------------------------------------------------------------


def _nsfw(inputs: NsfwArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    result = nsfw.run(nsfw.NsfwInput(image_url=inputs.image_url), work_dir, log)
    return {"nsfw_probability": result["nsfw_probability"]}


def _kontext(inputs: KontextArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    drawn = cartoonify.run(
        cartoonify.CartoonifyInput(
            image_url=inputs.image_url, prompt=inputs.prompt, size=IMAGE_SIDE
        ),
        work_dir,
        log,
    )
    image: OutputFile = drawn["image"]
    if inputs.output_format == "jpeg":
        image = _as_jpeg(image)
    flagged = nsfw.nsfw_probability(Image.open(image.path)) >= 0.5
    images = [image] + [_copy(image, work_dir, i) for i in range(1, inputs.num_images)]
    return {
        "images": images,
        "timings": {},
        "seed": inputs.seed if inputs.seed is not None else secrets.randbelow(2**31),
        "has_nsfw_concepts": [flagged] * len(images),
        "prompt": inputs.prompt,
    }


def _bria_expand(inputs: BriaExpandArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    canvas_w, canvas_h = inputs.canvas_size
    if not (1 <= canvas_w <= 5000 and 1 <= canvas_h <= 5000):
        raise InvalidInputError(f"canvas_size {inputs.canvas_size} must be 1..5000 a side")
    rgb = load_image(fetch_input(inputs.image_url, work_dir)).rgb
    size = inputs.original_image_size or (rgb.shape[1], rgb.shape[0])
    if size != (rgb.shape[1], rgb.shape[0]):
        rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8)
    x, y = inputs.original_image_location or ((canvas_w - size[0]) // 2, (canvas_h - size[1]) // 2)
    log(f"placing {size[0]}x{size[1]} at ({x}, {y}) on {canvas_w}x{canvas_h}")
    faces = analyze.detect_faces(rgb)
    grown, left = rgb, 0
    if faces:
        # Our full-body drawing grows its own canvas below (and beside) the face...
        face = Rect(faces[0].x, faces[0].y, faces[0].w, faces[0].h)
        grown, moved = cartoonify.expand_to_full_body(rgb, face)
        left = moved.x - face.x
    # ...which is then laid on the asked canvas, the original at its asked place; what
    # neither covers repeats the nearest edge, as an outpainted backdrop would continue.
    top_left = (x - left, y)
    canvas = _place(grown, top_left, (canvas_w, canvas_h))
    out = cartoonify.cartoonify(canvas, inputs.prompt)
    path = save_png(out, work_dir / "expanded.png")
    return {
        "image": OutputFile(path, "image/png", width=canvas_w, height=canvas_h),
        "seed": inputs.seed if inputs.seed is not None else secrets.randbelow(2**31),
    }


def _place(img: U8, top_left: tuple[int, int], size: tuple[int, int]) -> U8:
    """``img`` on a ``size`` canvas at ``top_left`` (clipped), edges repeated outward."""
    x, y = top_left
    width, height = size
    h, w = img.shape[:2]
    crop = img[max(0, -y) : max(0, min(h, height - y)), max(0, -x) : max(0, min(w, width - x))]
    if crop.size == 0:
        return np.zeros((height, width, 3), np.uint8)
    cy, cx = max(0, y), max(0, x)
    ch, cw = crop.shape[:2]
    border = cv2.copyMakeBorder(
        crop, cy, height - cy - ch, cx, width - cx - cw, cv2.BORDER_REPLICATE
    )
    return np.asarray(border, np.uint8)


def _figure_mask(image_url: str, work_dir: Path, log: LogFn) -> OutputFile:
    """Our segment-image's mask of the figure, seeded with the face our analyze finds."""
    rgb = load_image(fetch_input(image_url, work_dir)).rgb
    faces = analyze.detect_faces(fit_max_side(rgb, max(rgb.shape[:2])))
    face = Box(x=faces[0].x, y=faces[0].y, w=faces[0].w, h=faces[0].h) if faces else None
    found = segment_image.run(
        segment_image.SegmentImageInput(image_url=image_url, face=face), work_dir, log
    )
    mask: OutputFile = found["mask"]
    return mask


def _birefnet(inputs: BirefnetArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    mask = _figure_mask(inputs.image_url, work_dir, log)
    rgb = load_image(fetch_input(inputs.image_url, work_dir)).rgb
    alpha = load_mask(mask.path, (rgb.shape[1], rgb.shape[0]))
    rgba = np.dstack([rgb, alpha]).astype(np.uint8)
    cut = work_dir / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(cut)
    height, width = alpha.shape[:2]
    return {
        "image": OutputFile(cut, "image/png", width=width, height=height),
        "mask_image": mask if inputs.output_mask else None,
    }


def _kling(inputs: KlingArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    mask = _figure_mask(inputs.image_url, work_dir, log)
    mask_uri = "data:image/png;base64," + base64.b64encode(mask.path.read_bytes()).decode()
    made = animate.run(
        animate.AnimateInput(
            image_url=inputs.image_url,
            mask_url=mask_uri,
            prompt=inputs.prompt,
            fps=KLING_FPS,
            duration_seconds=float(inputs.duration),
        ),
        work_dir,
        log,
    )
    video: OutputFile = made["video"]
    # fal's video file object names no size.
    return {"video": OutputFile(video.path, video.content_type)}


def _segment(video_url: str, work_dir: Path, log: LogFn) -> tuple[Path, OutputFile]:
    """The input video and our segment-video's mask video of it, at its frame rate."""
    source = fetch_input(video_url, work_dir)
    fps = round(probe_video(source).fps or KLING_FPS)
    found = segment_video.run(
        segment_video.SegmentVideoInput(video_url=video_url, fps=fps), work_dir, log
    )
    mask: OutputFile = found["mask_video"]
    return source, mask


def _birefnet_video(inputs: BirefnetVideoArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    source, mask = _segment(inputs.video_url, work_dir, log)
    webm = inputs.video_output_type == "VP9 (.webm)"
    log(f"encoding the cut-out as {inputs.video_output_type}")
    video = _merge(source, mask.path, work_dir / "foreground", "vp9" if webm else "h264")
    result: dict[str, Any] = {"video": video, "mask_video": None}
    if inputs.output_mask:
        result["mask_video"] = _transcode_mask(mask.path, work_dir / "mask.webm") if webm else mask
    return result


def _veed(inputs: VeedArgs, work_dir: Path, log: LogFn) -> dict[str, Any]:
    source, mask = _segment(inputs.video_url, work_dir, log)
    log(f"encoding the cut-out ({inputs.output_codec})")
    return {"video": _merge(source, mask.path, work_dir / "foreground", inputs.output_codec)}


# --- ffmpeg ------------------------------------------------------------------------------

_VP9_FAST = ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "36", "-deadline", "realtime"]
_VP9_FAST += ["-cpu-used", "8", "-row-mt", "1", "-auto-alt-ref", "0"]


def _merge(video: Path, mask: Path, out: Path, codec: str) -> OutputFile:
    """The figure alone: vp9, one WebM whose alpha plane is the mask; h264, an MP4 of the
    figure over black (H.264 has no alpha)."""
    merge = "[1:v]format=gray[m];[0:v][m]alphamerge"
    if codec == "vp9":
        target = out.with_suffix(".webm")
        graph = f"{merge},format=yuva420p[v]"
        encode = [*_VP9_FAST, "-metadata:s:v:0", "alpha_mode=1", "-f", "webm"]
        content_type = "video/webm"
    else:
        target = out.with_suffix(".mp4")
        graph = f"{merge},premultiply=inplace=1,format=yuv420p[v]"
        encode = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-f", "mp4"]
        content_type = "video/mp4"
    _ffmpeg(
        ["-i", str(video), "-i", str(mask), "-filter_complex", graph, "-map", "[v]", *encode],
        target,
    )
    return OutputFile(target, content_type)


def _transcode_mask(mask: Path, target: Path) -> OutputFile:
    _ffmpeg(["-i", str(mask), "-vf", "format=yuv420p", *_VP9_FAST, "-f", "webm"], target)
    return OutputFile(target, "video/webm")


def _ffmpeg(args: list[str], target: Path) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    done = subprocess.run(
        [*command, str(target)], capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise InvalidInputError(f"ffmpeg could not encode the result: {tail}")


def _as_jpeg(image: OutputFile) -> OutputFile:
    target = image.path.with_suffix(".jpg")
    Image.open(image.path).convert("RGB").save(target, "JPEG", quality=92)
    return OutputFile(target, "image/jpeg", width=image.width, height=image.height)


def _copy(image: OutputFile, work_dir: Path, index: int) -> OutputFile:
    target = work_dir / f"image-{index}{image.path.suffix}"
    shutil.copyfile(image.path, target)
    return OutputFile(target, image.content_type, width=image.width, height=image.height)


_SPECS: Final = (
    (NSFW, AppSpec(NsfwArgs, _nsfw, "fal's NSFW score, by our classifier")),
    (KONTEXT, AppSpec(KontextArgs, _kontext, "FLUX Kontext's image edit, by our cartoonify")),
    (BRIA_EXPAND, AppSpec(BriaExpandArgs, _bria_expand, "Bria's outpaint, by our full body")),
    (BIREFNET, AppSpec(BirefnetArgs, _birefnet, "BiRefNet's cut-out, by our segment-image")),
    (KLING, AppSpec(KlingArgs, _kling, "Kling's image-to-video, by our animate")),
    (BIREFNET_VIDEO, AppSpec(BirefnetVideoArgs, _birefnet_video, "BiRefNet video, ours")),
    (VEED, AppSpec(VeedArgs, _veed, "veed's background removal, by our segment-video")),
)
FAL_APPS: Final[dict[str, AppSpec[Any]]] = dict(_SPECS)


def registry(mimic: str | None) -> dict[str, AppSpec[Any]]:
    """The apps a server mimicking ``mimic`` serves beside ours (none: ours alone)."""
    if mimic is None:
        return {}
    if mimic not in MIMICS:
        raise ValueError(f"--mimic {mimic!r}: one of {', '.join(MIMICS)}")
    return dict(FAL_APPS)


def queue_base(app: str) -> str:
    """Where fal's queue keeps an endpoint's requests: its owner and alias only
    (``fal-ai/flux-pro/kontext`` -> ``fal-ai/flux-pro``), as fal_client builds the
    status, result and cancel URLs of a request id."""
    return "/".join(app.split("/")[:2])
