"""The one image preprocessing definition: encoded bytes -> model-ready pixels.

Transform's `preprocessing_fn` calls `preprocess_with_checks`, and the exported serving
signatures run the same Transform graph, so training and serving cannot drift. Besides the
model's input it measures what the out-of-distribution input checks (components/ood.py)
judge: blank frame, colour, size, polarity and orientation.

The shared training radiographs were CLAHE-enhanced by a third party before they reached
us, while clinicians may upload un-enhanced films with any exposure. The graph therefore
applies adaptive histogram equalisation (AHE: per-tile rank mapping, interpolated between
tiles) to every image. Without a clip limit it is unchanged by any monotone intensity
mapping (exposure, contrast, gamma) and nearly idempotent, so an un-enhanced film and its
enhanced copy reach the model almost alike. Measured on 224-256 px knees: exposure/gamma
variants differ by 0.001-0.012 after it (0.09-0.20 before); a CLAHE-enhanced copy by
0.035 (0.059 before). A clip limit (classic CLAHE, 2.0) keeps 0.03-0.12 of those
differences, which is why it is off by default.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from components import features

CLAHE_GRID = features.IMAGE_SIZE_MULTIPLE  # tiles per side, the common 8x8 default
CLAHE_CLIP_LIMIT = None  # no clipping: see the module docstring
_BINS = 256

# Clip limit of each of features.EQUALISATIONS ("none" skips equalisation): unclipped
# AHE is the default, 2.0 is the classic CLAHE setting.
_CLIP_LIMITS = {"ahe": CLAHE_CLIP_LIMIT, "clahe": 2.0}
DEFAULT_EQUALISATION = features.DEFAULT_EQUALISATION


_CHROMA_SIZE = 64  # colour is measured on a small copy: a mean needs no detail
_CHECK_SIZE = 64  # the polarity and orientation measures read a small gray copy too

# A PNG starts with its signature, then the IHDR chunk, whose bit depth is byte 24.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_BYTE = 24
# Full scales a 16-bit PNG's data may use (8- to 16-bit detectors): 2^k - 1.
_FULL_SCALES = [2 ** k - 1 for k in range(8, 17)]


def _is_16_bit_png(image_bytes: tf.Tensor) -> tf.Tensor:
    """Whether the file is a PNG whose samples are 16-bit (from its IHDR chunk)."""
    # Padded so that short or empty bytes reach the decoder and its error message.
    head = tf.strings.substr(image_bytes + b"\0" * (_PNG_BIT_DEPTH_BYTE + 1), 0,
                             _PNG_BIT_DEPTH_BYTE + 1)
    depth = tf.io.decode_raw(tf.strings.substr(head, _PNG_BIT_DEPTH_BYTE, 1), tf.uint8)[0]
    return tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), _PNG_SIGNATURE),
                          tf.equal(depth, 16))


def _decode_16_bit_png(image_bytes: tf.Tensor) -> tf.Tensor:
    """A 16-bit PNG mapped to [0, 1] by the full scale of the data it holds.

    Detectors store 10-, 12- or 14-bit data in 16-bit PNGs; dividing by 65535 would squeeze a
    12-bit film into 1/16 of the range (16 of the equalisation's 256 levels). The full scale
    is the smallest 2^k - 1 (k = 8..16) at or above the film's maximum, so 8-, 10-, 12- and
    16-bit copies of one film give the same image; an 8-bit film stored as 16-bit (x 257)
    keeps 65535.
    """
    pixels = tf.io.decode_png(image_bytes, channels=0, dtype=tf.uint16)
    # The peak of the gray or colour samples: an opaque alpha channel is always 65535.
    colour_channels = tf.where(tf.shape(pixels)[-1] >= 3, 3, 1)
    peak = tf.cast(tf.reduce_max(pixels[..., :colour_channels]), tf.int32)
    scales = tf.constant(_FULL_SCALES, tf.int32)
    scale = tf.gather(scales, tf.argmax(tf.cast(scales >= peak, tf.int32)))
    return tf.cast(pixels, tf.float32) / tf.cast(scale, tf.float32)


def _decode(image_bytes: tf.Tensor, image_size: int):
    """One encoded file -> (gray image [S, S, 1] in [0, 1], chroma scalar, smaller side in
    pixels scalar, gray copy [_CHECK_SIZE, _CHECK_SIZE] of the whole unpadded film)."""
    image = tf.cond(
        _is_16_bit_png(image_bytes),
        lambda: _decode_16_bit_png(image_bytes),
        # dtype=float32 rescales 8-bit inputs to [0, 1].
        lambda: tf.io.decode_image(image_bytes, channels=0, dtype=tf.float32,
                                   expand_animations=False),
    )
    image.set_shape([None, None, None])
    channels = tf.shape(image)[-1]
    rgb = image[..., :3]

    def chroma():
        small = tf.image.resize(rgb, [_CHROMA_SIZE, _CHROMA_SIZE], method="area")
        return tf.reduce_mean(tf.reduce_max(small, axis=-1) - tf.reduce_min(small, axis=-1))

    colour = tf.cond(channels >= 3, chroma, lambda: tf.constant(0.0))
    image = tf.cond(
        channels >= 3,
        lambda: tf.image.rgb_to_grayscale(rgb),
        lambda: image[..., :1],
    )
    min_side = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
    check_copy = tf.image.resize(image, [_CHECK_SIZE, _CHECK_SIZE], method="area")[..., 0]
    # A film turned by 180 degrees is flagged, not put right: which half is brighter
    # depends on the source (real films vs the synthetic phantoms), so a fixed put-right
    # rule turned 98 % of the phantoms; the sign is learned instead (preprocessing_fn).
    image = tf.image.resize_with_pad(
        image, image_size, image_size, antialias=True
    )
    return tf.clip_by_value(image, 0.0, 1.0), colour, min_side, check_copy


def _polarity_and_anisotropy(small: tf.Tensor):
    """What a knee PA film's anatomy says about its polarity and orientation.

    The femur and tibia run vertically through the middle of the film, brighter than the
    soft tissue and air at its sides; the joint space crosses them horizontally. So the
    column means of an upright film vary much more than its row means (anisotropy > 0;
    < 0 when turned by 90 or 270 degrees), and along the axis across the bones the middle
    half is brighter than the outer eighths (polarity > 0; < 0 for an inverted film).
    Along the bones, one half of a film is brighter than the other in a consistent
    direction for a given source (real knee films: the femoral half, 99.4 % of them);
    the vertical asymmetry, multiplied by the sign of the polarity so that an inverted
    film keeps its sign, flips when the film is turned by 180 degrees. Which sign is
    upright is learned from the training films (`preprocessing_fn`).

    Args:
      small: float32 [N, H, W] gray films in [0, 1], resized to a fixed square.

    Returns:
      (polarity float32 [N] in [-1, 1], anisotropy float32 [N] in [-1, 1],
       vertical asymmetry float32 [N] in [-1, 1]).
    """
    size = small.shape[-1]
    columns = tf.reduce_mean(small, axis=1)  # [N, W], the profile across vertical bones
    rows = tf.reduce_mean(small, axis=2)
    spread_columns = tf.math.reduce_variance(columns, axis=1)
    spread_rows = tf.math.reduce_variance(rows, axis=1)
    anisotropy = tf.math.divide_no_nan(spread_columns - spread_rows,
                                       spread_columns + spread_rows)
    across_bones = tf.where((anisotropy >= 0)[:, None], columns, rows)
    side = size // 8
    middle = tf.reduce_mean(across_bones[:, size // 4: size - size // 4], axis=1)
    sides = tf.reduce_mean(tf.concat([across_bones[:, :side], across_bones[:, -side:]],
                                     axis=1), axis=1)
    polarity = middle - sides
    along_bones = tf.where((anisotropy >= 0)[:, None], rows, columns)
    vertical = (tf.reduce_mean(along_bones[:, :size // 2], axis=1)
                - tf.reduce_mean(along_bones[:, size // 2:], axis=1))
    polarity_sign = tf.where(polarity < 0, -1.0, 1.0)
    return polarity, anisotropy, vertical * polarity_sign


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one PNG/JPEG/BMP/GIF to a gray float image of `image_size` squared.

    Accepts 8- and 16-bit (10- to 16-bit data in a 16-bit PNG is mapped by its full scale,
    see `_decode_16_bit_png`), gray, gray+alpha, RGB and RGBA. The aspect ratio is kept
    (padded with black) so a non-square film is not distorted.

    Args:
      image_bytes: scalar tf.string, the encoded file.
      image_size: output height and width.

    Returns:
      float32 [image_size, image_size, 1] in [0, 1].

    Raises:
      tf.errors.InvalidArgumentError: the bytes are not an image TensorFlow decodes.
    """
    return _decode(image_bytes, image_size)[0]


def clahe(images: tf.Tensor, grid: int = CLAHE_GRID,
          clip_limit: Optional[float] = CLAHE_CLIP_LIMIT) -> tf.Tensor:
    """(Contrast-limited) adaptive histogram equalisation, batched, in the TF graph.

    Per tile: a 256-bin histogram, optionally clipped at `clip_limit` times the flat
    height (the excess spread evenly), its CDF as the tile's mapping; each pixel is mapped by
    bilinear interpolation between the four nearest tile centres.

    Args:
      images: float32 [N, S, S, 1] in [0, 1]; S must be a multiple of `grid`.
      grid: tiles per side.
      clip_limit: clip height relative to a flat histogram; None for no clipping.

    Returns:
      float32 [N, S, S, 1] in [0, 1].
    """
    size = images.shape[1]
    if size is None or size % grid:
        raise ValueError(f"CLAHE needs a static image size divisible by {grid}, got {size}")
    tile = size // grid
    batch = tf.shape(images)[0]
    levels = tf.cast(tf.round(images[..., 0] * (_BINS - 1)), tf.int32)  # [N, S, S]

    # Histograms of all tiles of all images with one bincount over offset indices.
    tiles = tf.reshape(levels, [batch, grid, tile, grid, tile])
    tiles = tf.transpose(tiles, [0, 1, 3, 2, 4])  # [N, gy, gx, ty, tx]
    tile_ids = tf.reshape(tf.range(batch * grid * grid), [batch, grid, grid, 1, 1])
    flat = tf.reshape(tile_ids * _BINS + tiles, [-1])
    hist = tf.math.bincount(flat, minlength=batch * grid * grid * _BINS,
                            maxlength=batch * grid * grid * _BINS, dtype=tf.float32)
    hist = tf.reshape(hist, [batch * grid * grid, _BINS])

    if clip_limit is not None:
        limit = max(clip_limit * tile * tile / _BINS, 1.0)
        excess = tf.reduce_sum(tf.nn.relu(hist - limit), axis=1, keepdims=True)
        hist = tf.minimum(hist, limit) + excess / _BINS
    mapping = tf.cumsum(hist, axis=1) / float(tile * tile)  # [N*g*g, 256]
    mapping = tf.reshape(mapping, [-1])

    # Position of every pixel relative to the tile centres.
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / tile - 0.5
    centres = tf.clip_by_value(centres, 0.0, grid - 1.0)
    low = tf.cast(tf.floor(centres), tf.int32)
    high = tf.minimum(low + 1, grid - 1)
    frac = centres - tf.cast(low, tf.float32)

    image_ids = tf.reshape(tf.range(batch), [batch, 1, 1])

    def lookup(rows, cols):
        tile_index = (image_ids * grid + rows[None, :, None]) * grid + cols[None, None, :]
        return tf.gather(mapping, tile_index * _BINS + levels)

    wy = frac[None, :, None]
    wx = frac[None, None, :]
    top = (1 - wx) * lookup(low, low) + wx * lookup(low, high)
    bottom = (1 - wx) * lookup(high, low) + wx * lookup(high, high)
    out = (1 - wy) * top + wy * bottom
    return tf.clip_by_value(out, 0.0, 1.0)[..., None]


def preprocess_with_checks(image_bytes: tf.Tensor, image_size: int,
                           equalisation: str = DEFAULT_EQUALISATION):
    """Encoded images -> the model's input and what the out-of-distribution input checks
    measure on the same decoded films (components/ood.py).

    Args:
      image_bytes: tf.string of any shape whose elements are encoded images.
      image_size: output size; a multiple of CLAHE_GRID.
      equalisation: one of features.EQUALISATIONS.

    Returns:
      (images float32 [N, image_size, image_size, 1] in [0, 1], enhanced;
       measures: dict of float32 [N] keyed by features.INPUT_CHECK_KEYS:
         PIXEL_STD_KEY, the gray pixels' standard deviation before enhancement;
         CHROMA_KEY, mean max - min over R, G, B, 0 for gray files;
         MIN_SIDE_KEY, the decoded film's smaller side in pixels;
         POLARITY_KEY, ANISOTROPY_KEY and VERTICAL_KEY, see `_polarity_and_anisotropy`).

    Raises:
      ValueError: unknown `equalisation`.
      tf.errors.InvalidArgumentError (when run): bytes that are not an image.
    """
    if equalisation not in features.EQUALISATIONS:
        raise ValueError(f"equalisation must be one of {features.EQUALISATIONS}, "
                         f"got {equalisation!r}")
    flat = tf.reshape(image_bytes, [-1])
    images, chroma, min_side, small = tf.map_fn(
        lambda b: _decode(b, image_size),
        flat,
        fn_output_signature=(tf.TensorSpec([image_size, image_size, 1], tf.float32),
                             tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32),
                             tf.TensorSpec([_CHECK_SIZE, _CHECK_SIZE], tf.float32)),
    )
    polarity, anisotropy, vertical = _polarity_and_anisotropy(small)
    measures = {
        features.PIXEL_STD_KEY: tf.math.reduce_std(images, axis=[1, 2, 3]),
        features.CHROMA_KEY: chroma,
        features.MIN_SIDE_KEY: min_side,
        features.POLARITY_KEY: polarity,
        features.ANISOTROPY_KEY: anisotropy,
        features.VERTICAL_KEY: vertical,
    }
    if equalisation != "none":
        images = clahe(images, clip_limit=_CLIP_LIMITS[equalisation])
    return images, measures


def preprocess_images(image_bytes: tf.Tensor, image_size: int,
                      equalisation: str = DEFAULT_EQUALISATION) -> tf.Tensor:
    """Encoded images -> float32 [N, image_size, image_size, 1] in [0, 1], enhanced.

    The image part of `preprocess_with_checks`; same arguments and errors.
    """
    return preprocess_with_checks(image_bytes, image_size, equalisation)[0]


def preprocessing_fn(inputs, custom_config):
    """TFX Transform entry point.

    Args:
      inputs: raw features (see components/features.py).
      custom_config: {"image_size": int, "equalisation": str (optional)} from the
        pipeline config.

    Returns:
      The model's input image, the input-check measures (features.INPUT_CHECK_KEYS),
      UPRIGHT_KEY, the label and the patient id (the Trainer's patient-disjoint
      selection split, `model.select_fraction`; serving never asks for it).
    """
    size = int(custom_config["image_size"])
    equalisation = custom_config.get("equalisation", DEFAULT_EQUALISATION)
    images, measures = preprocess_with_checks(inputs[features.IMAGE_KEY], size, equalisation)
    # Which half is brighter along the bones depends on the source (real films: the
    # femur's; the synthetic phantoms: the other), so the upright sign is the training
    # films' mean sign, a constant of the exported graph.
    upright_sign = tf.where(tft.mean(measures[features.VERTICAL_KEY]) < 0, -1.0, 1.0)
    return {
        features.TRANSFORMED_IMAGE_KEY: images,
        **measures,
        features.UPRIGHT_KEY: measures[features.VERTICAL_KEY] * upright_sign,
        features.LABEL_KEY: tf.reshape(inputs[features.LABEL_KEY], [-1]),
        features.PATIENT_KEY: tf.reshape(inputs[features.PATIENT_KEY], [-1]),
    }
