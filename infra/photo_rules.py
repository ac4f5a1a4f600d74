"""What a usable photo is, in one place: the API refuses at upload what the pipeline's
analysis step would refuse later (after charging a token), and both read these."""

from __future__ import annotations

# The short side below which faces are too coarse to cartoonify.
MIN_SIDE = 128
# The largest output the pipeline renders (the model apps' ``size`` field allows up to
# 2048): the API stores uploads downscaled to this, so nothing bigger is kept or moved.
MAX_SIDE = 2048
